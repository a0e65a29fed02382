import pytest
import torch

from storyloom.config import ModelConfig
from storyloom.errors import UserError
from storyloom.model import LanguageModel, n_params


def make(input="embedding", layers=2, dropout=0.0):
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(vocab_size=11, input=input, embed=8, hidden=16, layers=layers, dropout=dropout)).eval()


@pytest.mark.parametrize("input", ["embedding", "onehot", "scalar"])
def test_two_calls_with_carried_state_equal_one(input, dev):
    m = make(input).to(dev)
    x = torch.randint(0, 11, (3, 20), device=dev)
    full, _ = m(x)
    a, s = m(x[:, :10])
    b, _ = m(x[:, 10:], s)
    assert full.shape == (3, 20, 11)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-5, atol=1e-6)


def test_forward_matches_the_seed_equations_step_by_step():
    m = make("onehot", layers=1)
    x = torch.randint(0, 11, (2, 7))
    logits, (hT, cT) = m(x)
    W_ih, W_hh = m.cell.weight_ih_l0, m.cell.weight_hh_l0
    b = m.cell.bias_ih_l0 + m.cell.bias_hh_l0
    h = torch.zeros(2, 16)
    c = torch.zeros(2, 16)
    outs = []
    for t in range(7):
        xt = torch.nn.functional.one_hot(x[:, t], 11).float()
        z = xt @ W_ih.T + h @ W_hh.T + b
        i, f, g, o = z.chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g  # C_t = f_t * C_{t-1} + i_t * C~_t
        h = o * torch.tanh(c)  # h_t = o_t * tanh(C_t)
        outs.append(m.head(h))
    torch.testing.assert_close(torch.stack(outs, 1), logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, hT[0], rtol=1e-5, atol=1e-5)


def test_forget_gate_bias_starts_at_one():
    m = make()
    H = 16
    for layer in range(2):
        total = getattr(m.cell, f"bias_ih_l{layer}") + getattr(m.cell, f"bias_hh_l{layer}")
        assert torch.all(total[H : 2 * H] == 1.0)


def test_seed_001_parameter_count():
    # Seed 001: LSTM(128) + Dense over 36 characters has 89,124 parameters.
    # PyTorch keeps two bias vectors per gate, so it has 4*128 more.
    m = LanguageModel(ModelConfig(vocab_size=36, input="onehot", hidden=128, layers=1, dropout=0.0))
    assert n_params(m) == 89_124 + 4 * 128


@pytest.mark.parametrize("input", ["embedding", "onehot", "scalar"])
def test_step_equals_forward(input, dev):
    m = make(input, layers=2).to(dev)
    x = torch.randint(0, 11, (3, 12), device=dev)
    full, (h, c) = m(x)
    state = m.initial_state(3, dev)
    for t in range(12):
        logits, state = m.step(x[:, t], state)
        torch.testing.assert_close(logits, full[:, t], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state[0], h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state[1], c, rtol=1e-5, atol=1e-5)


def test_tied_head_shares_the_embedding_through_a_projection():
    from storyloom.config import ModelConfig
    from storyloom.model import LanguageModel

    m = LanguageModel(ModelConfig(vocab_size=50, embed=16, hidden=32, layers=1, dropout=0.0, tie=True))
    assert m.head.weight is m.inp.weight and m.proj.weight.shape == (16, 32)
    same = LanguageModel(ModelConfig(vocab_size=50, embed=32, hidden=32, layers=1, dropout=0.0, tie=True))
    assert same.proj is None and same.head.weight is same.inp.weight
    x = torch.randint(0, 50, (2, 7))
    logits, state = m(x)
    step_logits, _ = m.step(x[:, 0], m.initial_state(2))
    torch.testing.assert_close(step_logits, logits[:, 0], rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="--tie shares the embedding with the head, so it needs --input embedding, not onehot"):
        ModelConfig(vocab_size=50, input="onehot", tie=True)
