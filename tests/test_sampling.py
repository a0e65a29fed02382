import pytest
import torch

from storyloom.errors import UserError
from storyloom.sampling import SampleConfig, ban, draw, repetition_penalty, shape_logits, top_k, top_p

NEG = float("-inf")


def kept(logits):
    return (logits > NEG).squeeze(0).nonzero().flatten().tolist()


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.25, 0.15, 0.1]])
    logits = probs.log()
    assert kept(top_p(logits, 0.5)) == [0]
    assert kept(top_p(logits, 0.51)) == [0, 1]
    assert kept(top_p(logits, 0.75)) == [0, 1]
    assert kept(top_p(logits, 0.76)) == [0, 1, 2]
    assert kept(top_p(logits, 1.0)) == [0, 1, 2, 3]
    # order of the vocabulary does not matter
    shuffled = logits[:, [2, 0, 3, 1]]
    assert kept(top_p(shuffled, 0.76)) == [0, 1, 3]


def test_top_k_and_ban():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    assert kept(top_k(logits, 2)) == [1, 2]
    assert kept(ban(logits, [1, 3])) == [0, 2]


def test_repetition_penalty_only_touches_recent_tokens():
    logits = torch.tensor([[2.0, -1.0, 2.0]])
    out = repetition_penalty(logits, torch.tensor([[0, 1]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 2.0]]


def test_draw_is_reproducible_per_row_and_greedy_at_zero():
    logits = torch.randn(3, 50)
    a = draw(logits, 1.0, [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    b = draw(logits, 1.0, [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    assert a.tolist() == b.tolist()
    # row 1 depends only on its own generator
    c = draw(logits[1:2], 1.0, [torch.Generator().manual_seed(2)])
    assert c.item() == a[1].item()
    assert draw(logits, 0.0, []).tolist() == logits.argmax(-1).tolist()


@pytest.mark.parametrize("u", [0.0, 0.5, 1.0, 1.5])  # 0 and past 1: the float edges the guard is for
def test_one_row_draws_as_its_row_of_a_batch_at_the_float_edges(monkeypatch, u):
    import storyloom.sampling as sampling

    logits = torch.randn(3, 20)
    logits[0, 0] = logits[1, -1] = logits[2, -3:] = float("-inf")  # no probability where u = 0 or u > 1 lands
    monkeypatch.setattr(sampling.torch, "rand", lambda n, generator=None: torch.full((n,), u))
    batch = draw(logits, 1.0, [torch.Generator() for _ in range(3)])
    rows = [draw(logits[i : i + 1], 1.0, [torch.Generator()]).item() for i in range(3)]
    assert rows == batch.tolist()
    assert all(torch.isfinite(logits[i, j]) for i, j in enumerate(rows))


def test_draw_never_picks_a_filtered_token():
    logits = shape_logits(torch.randn(1, 30), SampleConfig(temperature=1.5, top_k=3), banned=(0, 1))
    allowed = set(kept(logits))
    for s in range(200):
        assert draw(logits, 1.5, [torch.Generator().manual_seed(s)]).item() in allowed


@pytest.mark.parametrize("kw, flag", [({"temperature": -0.1}, "--temperature"), ({"top_p": 0.0}, "--top-p"),
                                      ({"top_p": 1.5}, "--top-p"), ({"top_k": -1}, "--top-k"), ({"top_k": 0}, "--top-k"),
                                      ({"repetition_penalty": 0.5}, "--repetition-penalty")])
def test_absurd_settings_name_their_flag(kw, flag):
    with pytest.raises(UserError, match=flag):
        SampleConfig(**kw)
