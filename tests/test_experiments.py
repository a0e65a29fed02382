import json

import pytest
import torch

from storyloom import experiments as E
from storyloom.cli import main


def test_recall_task_puts_the_answer_K_steps_before_the_question():
    gen = torch.Generator().manual_seed(0)
    for K in (1, 2, 7, 50):
        x, y = E.recall_batch(K, 64, gen)
        assert x.shape == (64, K + 1)
        assert (x[:, -1] == E.QUERY).all() and (x[:, -1 - K] == y).all()  # the key, exactly K back
        assert ((x[:, 1:-1] >= E.KEYS) & (x[:, 1:-1] < E.QUERY)).all()  # in between, only distractors
        assert (y < E.KEYS).all()
    assert len(set(E.recall_batch(5, 512, gen)[1].tolist())) == E.KEYS


def test_a_short_distance_is_learned_and_chance_is_the_floor():
    assert E.train_recall("lstm", 2, steps=150) > 0.9
    assert E.train_recall("lstm", 2, steps=0) < 0.5


def test_hidden_gradient_norms_are_per_distance():
    from storyloom.config import ModelConfig
    from storyloom.model import LanguageModel

    m = LanguageModel(ModelConfig(vocab_size=10, embed=4, hidden=8, layers=1, dropout=0.0, cell="rnn"))
    x = torch.randint(0, 10, (3, 12))
    norms = E.hidden_grad_norms(m, x, x)
    assert len(norms) == 11 and all(n >= 0 for n in norms) and norms[0] > 0
    # The same norms by hand: h_t = tanh(W_ih e_t + b_ih + W_hh h_{t-1} + b_hh), the loss at the last step only,
    # its gradient carried back one step at a time through the tanh and W_hh.
    c, B, T = m.cell, x.shape[0], x.shape[1]
    with torch.no_grad():
        e, hs = m.inp(x), [torch.zeros(B, 8)]
        for t in range(T):
            hs.append(torch.tanh(e[:, t] @ c.weight_ih_l0.T + c.bias_ih_l0 + hs[-1] @ c.weight_hh_l0.T + c.bias_hh_l0))
        p = torch.softmax(m.head(hs[-1]), -1)
        g = (p - torch.nn.functional.one_hot(x[:, -1], 10)) / B @ m.head.weight  # dL/dh_T, (B, H)
        want = []
        for t in range(T, 1, -1):
            g = (g * (1 - hs[t] ** 2)) @ c.weight_hh_l0  # dL/dh_{t-1}
            want.append(g.norm(dim=-1).mean().item())
    assert norms == pytest.approx(want, rel=1e-4)


def test_experiments_write_plots_and_reports(tmp_path, capsys):
    s = E.long_range(tmp_path / "lr", distances=(2, 4), cells=("rnn", "transformer"), steps=20, hidden=16, log=lambda _: None)
    assert set(s["largest_K_solved"]) == {"rnn", "transformer"}
    assert (tmp_path / "lr" / "long_range.png").read_bytes()[:4] == b"\x89PNG"
    assert "largest K solved" in (tmp_path / "lr" / "report.md").read_text()
    code = main(["experiment", "gradients", "--out", str(tmp_path / "g"), "--steps", "5", "--threads", "1"])
    assert code == 0
    r = json.loads((tmp_path / "g" / "results.json").read_text())
    assert set(r["norms"]) == {"rnn", "lstm"} and set(r["exploding"]) == {"no clipping", "clipped at 1.0"}
    for f in ("vanishing.png", "exploding_loss.png", "exploding_grad_norm.png", "report.md"):
        assert (tmp_path / "g" / f).exists()
