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


@pytest.mark.parametrize("precision, tol", [("fp32", 0.0), ("bf16", 2e-2), ("int8", 2e-2)])
def test_a_matrix_held_in_fewer_bytes_multiplies_like_the_fp32_one(precision, tol):
    from storyloom.cells import Matrix

    torch.manual_seed(0)
    W, b, x = torch.randn(48, 40), torch.randn(40), torch.randn(3, 48)
    ref = torch.addmm(b, x, W)
    got = Matrix(W, precision).addmm(b, x)
    assert got.dtype == torch.float32 and got.shape == (3, 40)
    if precision == "fp32":
        assert torch.equal(got, ref)  # exact: the same call
    else:  # a naive reference: the weights rounded as described, then an fp32 product
        if precision == "int8":  # the weights rounded per column; x too, per call, to 7 bits over its own range
            s = W.abs().amax(0) / 127
            lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
            sx = (hi - lo) / 127
            zx = round(-lo / sx)
            xq = (torch.clamp(torch.round(x / sx) + zx, 0, 127) - zx) * sx
            naive = torch.addmm(b, xq, torch.round(W / s) * s)
            rtol, atol = 1e-3, 0.05
        else:  # bf16 inputs, the product rounded to bf16 (8 bits of mantissa)
            naive, rtol, atol = torch.addmm(b, x.bfloat16().float(), W.bfloat16().float()), 2**-7, 1e-3
        torch.testing.assert_close(got, naive, rtol=rtol, atol=atol)
        assert (got - ref).abs().max() <= tol * ref.abs().max()
    assert Matrix(W, precision).bytes() == W.numel() * {"fp32": 4, "bf16": 2, "int8": 1}[precision]


@pytest.mark.parametrize("layers", [1, 2])
def test_an_int8_read_is_the_quantised_lstm_written_out_and_the_same_however_the_text_is_cut(layers):
    """cells.LSTM.read in int8 against the LSTM equations over Matrix products: each layer's input, with its two
    pinning columns, one product over the whole sequence; the recurrent product one per step."""
    from storyloom.cells import LSTM, Matrix

    torch.manual_seed(layers)
    cell = LSTM(12, 16, layers, 0.0).eval()
    e, H, bounds = torch.randn(1, 9, 12), 16, (-4.0, 4.0)
    state = (torch.randn(layers, 1, H), torch.randn(layers, 1, H))
    with torch.inference_mode():
        got, (hn, cn) = cell.read(e, state, "int8", bounds)
        inp, hs_n, cs_n = e, [], []
        for l in range(layers):
            g = lambda n: getattr(cell, f"{n}_l{l}").detach()
            pins = torch.tensor(bounds if l == 0 else (-1.0, 1.0)).expand(1, 9, 2)
            W_ih = Matrix(torch.cat([g("weight_ih"), torch.zeros(4 * H, 2)], 1).t(), "int8")
            zin = W_ih.addmm(g("bias_ih"), torch.cat([inp, pins], 2)[0])  # (T, 4H)
            W_hh = Matrix(g("weight_hh").t(), "int8")
            h, c, hs = state[0][l], state[1][l], []
            for t in range(9):
                i, f, gg, o = (zin[t : t + 1] + W_hh.addmm(g("bias_hh"), h)).chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
                h = torch.sigmoid(o) * torch.tanh(c)
                hs.append(h)
            inp = torch.stack(hs, 1)
            hs_n.append(h)
            cs_n.append(c)
        exact, _ = cell(e, state)
        assert torch.equal(cell.read(e, state, "fp32")[0], exact)  # other precisions are forward() itself
        first, mid = cell.read(e[:, :4], state, "int8", bounds)
        rest, end = cell.read(e[:, 4:], mid, "int8", bounds)
    torch.testing.assert_close(got, inp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close((hn, cn), (torch.stack(hs_n), torch.stack(cs_n)), rtol=1e-5, atol=1e-5)
    assert 0 < (got - exact).abs().max() < 0.05  # and close to fp32
    # the pinned range: a text read in two calls is the text read in one (without the pins it is not)
    assert torch.equal(torch.cat([first, rest], 1), got) and all(torch.equal(a, b) for a, b in zip(end, (hn, cn)))


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("layers", [1, 2])
def test_an_lstm_steps_in_fewer_bytes_close_to_fp32(precision, layers):
    m = make("lstm", layers=layers).eval()
    assert precision in m.cell.precisions and "int8" not in make("gru").cell.precisions
    x = torch.randint(0, 11, (4, 20))
    exact, _ = m.steps(x, None, "fp32")
    full, _ = m(x)
    torch.testing.assert_close(exact, full, rtol=1e-5, atol=1e-5)  # steps() is forward, token by token
    fast, _ = m.steps(x, None, precision)
    assert 0 < (fast - exact).abs().max() < 0.05
