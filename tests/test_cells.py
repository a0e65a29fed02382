import math

import pytest
import torch

import storyloom
from storyloom.config import ModelConfig
from storyloom.model import LanguageModel

from conftest import TINY

CELLS = ["lstm", "lstm-reference", "gru", "rnn", "transformer"]


def make(cell, layers=2, **kw):
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(vocab_size=11, embed=8, hidden=16, layers=layers, dropout=0.0, cell=cell, heads=4,
                                     context=5, **kw))


def test_reference_lstm_equals_torch_lstm_in_outputs_and_gradients():
    fast, ref = make("lstm"), make("lstm-reference")
    missing = ref.load_state_dict(fast.state_dict(), strict=True)  # the same parameter names and layout
    assert not missing.missing_keys
    x = torch.randint(0, 11, (3, 9))
    state = fast.initial_state(3)
    state = tuple(s + 0.1 * torch.randn_like(s) for s in state)
    (la, sa), (lb, sb) = fast(x, state), ref(x, state)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    for a, b in zip(sa, sb):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    la.square().mean().backward()
    lb.square().mean().backward()
    grads = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-5, atol=1e-5, msg=name)


def test_reference_lstm_records_its_gates():
    m = make("lstm-reference")
    m.cell.record = True
    m(torch.randint(0, 11, (2, 6)))
    g = m.cell.gates
    assert set(g) == {"input", "forget", "output", "cell"} and g["forget"].shape == (2, 2, 6, 16)
    assert ((g["forget"] > 0) & (g["forget"] < 1)).all()


@pytest.mark.parametrize("cell", CELLS)
def test_two_calls_equal_one_and_step_equals_forward(cell):
    m = make(cell).eval()
    x = torch.randint(0, 11, (2, 12))
    full, _ = m(x)
    a, st = m(x[:, :7])
    b, _ = m(x[:, 7:], st)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-5, atol=1e-5)
    state = m.initial_state(2)
    for t in range(12):
        logits, state = m.step(x[:, t], state)
        torch.testing.assert_close(logits, full[:, t], rtol=1e-5, atol=1e-5)


def test_transformer_is_causal_and_forgets_beyond_its_context():
    m = make("transformer").eval()
    x = torch.randint(0, 11, (1, 12))
    y = x.clone()
    y[0, 8] = (y[0, 8] + 1) % 11
    a, b = m(x)[0], m(y)[0]
    torch.testing.assert_close(a[0, :8], b[0, :8])  # the future does not leak back
    assert not torch.allclose(a[0, 8], b[0, 8])


@pytest.mark.parametrize("cell", CELLS)
def test_each_cell_trains_and_survives_save_and_load(tmp_path, sonnets, cell):
    (tmp_path / "s.txt").write_text(sonnets[:8000])
    run = storyloom.train([str(tmp_path / "s.txt")], out=tmp_path / "r", steps=6, cell=cell, progress=False,
                          **{**TINY, "heads": 4, "context": 16, "checkpoint_every": 3})
    m = storyloom.load(run)
    assert m.config.model.cell == cell
    assert len(m.generate("Shall I", 12, seed=1)) == 12
    r = m.score(sonnets[:500])
    assert 0 < r["bpc"] < 10
    ids = torch.from_numpy(m.tokenizer.ids(sonnets[:500]).astype("int64"))
    with torch.no_grad():  # the score is the mean cross-entropy of every next character, read as one stream
        logits, _ = m.model(ids[None, :-1].to(m.device))
        nats = torch.nn.functional.cross_entropy(logits[0].cpu(), ids[1:]).item()
    assert r["bpc"] == pytest.approx(nats / math.log(2), abs=1e-4) and r["chars"] == 499
    storyloom.train(resume=run, steps=8, progress=False)  # the carried state checkpoints and resumes
    assert storyloom.status(run)["step"] == 8


def test_forget_bias_is_a_setting():
    H = 16
    for cell in ("lstm", "lstm-reference"):
        m = make(cell, layers=2, forget_bias=3.0)
        for l in range(2):
            total = getattr(m.cell, f"bias_ih_l{l}") + getattr(m.cell, f"bias_hh_l{l}")
            assert torch.all(total[H : 2 * H] == 3.0) and not torch.all(total[:H] == 3.0)
    with pytest.raises(storyloom.UserError, match="--forget-bias"):
        make("lstm", forget_bias=float("nan"))
