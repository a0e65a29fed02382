"""kernels.py: the C++ LSTM recurrence for training against torch's own LSTM, and how a run picks it.

Every test that runs lstm.cpp builds it first (10-30 s once, cached like write.cpp): a machine without a C++
compiler fails test_the_recurrence_builds, naming the fix, instead of skipping what it cannot check.
"""

import platform

import pytest
import torch

import storyloom
from storyloom import kernels, runtime
from storyloom.cells import GRU, LSTM
from storyloom.errors import UserError
from storyloom.runs import Run

from conftest import TINY

X86 = platform.machine() in ("x86_64", "AMD64")
pytestmark = pytest.mark.skipif(not X86, reason="lstm.cpp is x86 code (AVX2); elsewhere torch's kernel trains")


def test_the_recurrence_builds():
    assert kernels.build_lstm() == "", "lstm.cpp did not build: install a C++ compiler (g++)"


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max().clamp_min(1e-12))


def both(lstm: LSTM, e: torch.Tensor, state, kernel: str, dtype=None):
    """lstm's outputs and every gradient (weights, input, carried state) through `kernel`, for a fixed loss."""
    lstm.zero_grad()
    e = e.clone().requires_grad_()
    state = tuple(s.clone().requires_grad_() for s in state)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None), kernels.lstm_kernel(kernel):
        h, (hn, cn) = lstm(e, state)
    w = torch.linspace(-1, 1, h.numel()).view_as(h)  # a loss that weighs every output differently
    ((h.float() * w).sum() + hn.float().square().sum() + cn.float().sin().sum()).backward()
    grads = {name: p.grad.clone() for name, p in lstm.named_parameters()}
    return {"h": h.float(), "hn": hn.float(), "cn": cn.float(), "e": e.grad, "h0": state[0].grad, "c0": state[1].grad,
            **grads}


@pytest.mark.parametrize("layers, B, T, H", [(1, 3, 7, 16), (2, 4, 5, 20), (1, 1, 1, 8)])
def test_the_loops_equal_nn_lstm_in_outputs_and_every_gradient(layers, B, T, H):
    torch.manual_seed(layers * 100 + H)
    lstm = LSTM(6, H, layers, dropout=0.0)
    e = torch.randn(B, T, 6)
    state = (torch.randn(layers, B, H) * 0.5, torch.randn(layers, B, H) * 0.5)
    ours, theirs = both(lstm, e, state, "loops"), both(lstm, e, state, "torch")
    assert ours.keys() == theirs.keys() and len(ours) == 6 + 4 * layers
    for k in theirs:
        assert relative(ours[k], theirs[k]) < 1e-5, k


def test_the_loops_in_bf16_stay_as_close_to_fp32_as_torchs_bf16_kernel():
    if not runtime.native_bf16(torch.device("cpu")):  # oneDNN packs bf16 weights only with AVX-512 or AMX
        pytest.skip("bf16 is not native on this CPU: --precision auto trains in fp32, --lstm-kernel auto with torch")
    torch.manual_seed(0)
    lstm = LSTM(6, 32, 1, dropout=0.0)
    e, state = torch.randn(4, 9, 6), (torch.zeros(1, 4, 32), torch.zeros(1, 4, 32))
    exact, ours, theirs = both(lstm, e, state, "torch"), both(lstm, e, state, "loops", torch.bfloat16), \
        both(lstm, e, state, "torch", torch.bfloat16)
    for k in exact:
        assert relative(ours[k], exact[k]) < max(3 * relative(theirs[k], exact[k]), 2e-2), k


def test_the_loops_run_only_where_asked_with_gradients_on_a_cpu(monkeypatch):
    lstm, e = LSTM(4, 8, 1, dropout=0.0), torch.randn(2, 3, 4)
    calls = []
    real = kernels.Recurrence.apply
    monkeypatch.setattr(kernels.Recurrence, "apply", lambda *a: calls.append(1) or real(*a))
    lstm(e)
    with kernels.lstm_kernel("torch"):
        lstm(e)
    with kernels.lstm_kernel("loops"), torch.no_grad():  # evaluation and writing: torch's kernel, nothing saved
        lstm(e)
    assert calls == []
    with kernels.lstm_kernel("loops"):
        lstm(e)
    assert calls == [1]
    lstm(e)  # the context closed
    assert calls == [1]


def test_dropout_between_layers_applies_in_training_only():
    torch.manual_seed(1)
    lstm, e = LSTM(4, 8, 2, dropout=0.5), torch.randn(2, 5, 4)
    with kernels.lstm_kernel("loops"):
        a, b = lstm(e)[0], lstm(e)[0]  # two dropout masks
        lstm.eval()
        c, d = lstm(e)[0], lstm(e)[0]
    assert not torch.equal(a, b) and torch.equal(c, d)
    assert relative(c, lstm(e)[0]) < 1e-5  # in eval, the same function as torch's kernel


class Model(torch.nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.cell = cell


CPU = torch.device("cpu")


def test_auto_picks_the_loops_only_where_they_measured_faster(monkeypatch):
    model = Model(LSTM(4, 8, 1, dropout=0.0))
    monkeypatch.setattr(kernels, "loops_faster", lambda precision, dev: False)
    assert kernels.resolve_lstm_kernel("auto", "bf16", CPU, model) == "torch"
    assert kernels.resolve_lstm_kernel("loops", "fp32", CPU, model) == "loops"  # asked for by name
    monkeypatch.setattr(kernels, "loops_faster", lambda precision, dev: True)
    assert kernels.resolve_lstm_kernel("auto", "bf16", CPU, model) == "loops"
    assert kernels.resolve_lstm_kernel("torch", "bf16", CPU, model) == "torch"
    assert kernels.resolve_lstm_kernel("auto", "bf16", CPU, Model(GRU(4, 8, 1, 0.0))) == "torch"  # no LSTM to run


@pytest.mark.parametrize("vendor, flags, precision, dev, faster", [
    ("AuthenticAMD", {"avx2", "avx512f", "avx512_bf16"}, "bf16", "cpu", True),  # Zen 5: 1.41x a batch
    ("AuthenticAMD", {"avx2", "avx512f", "avx512_bf16"}, "fp32", "cpu", False),
    ("AuthenticAMD", {"avx2"}, "fp32", "cpu", False),  # Zen 3, fp32: 0.92-0.97x
    ("GenuineIntel", {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, "bf16", "cpu", False),  # AMX: not yet measured
    ("AuthenticAMD", {"avx2", "avx512f", "avx512_bf16"}, "bf16", "cuda", False),
])
def test_where_the_loops_are_faster(monkeypatch, vendor, flags, precision, dev, faster):
    from storyloom import cpu

    monkeypatch.setattr(kernels, "cpu_info", lambda: cpu.CPU(vendor, "", frozenset(flags)))
    assert kernels.loops_faster(precision, torch.device(dev)) is faster


def test_bad_lstm_kernel_requests_are_one_line_naming_the_flag(monkeypatch):
    with pytest.raises(UserError, match="--lstm-kernel loops trains the lstm cell"):
        kernels.resolve_lstm_kernel("loops", "fp32", CPU, Model(GRU(4, 8, 1, 0.0)))
    with pytest.raises(UserError, match="--lstm-kernel loops runs on a CPU"):
        kernels.resolve_lstm_kernel("loops", "fp32", torch.device("cuda"), Model(LSTM(4, 8, 1, dropout=0.0)))
    with pytest.raises(UserError, match="--lstm-kernel must be one of auto, torch, loops"):
        storyloom.config.TrainConfig(lstm_kernel="fast")


def test_fault_without_a_compiler_auto_trains_with_torchs_kernel_and_says_why(monkeypatch, capsys):
    model = Model(LSTM(4, 8, 1, dropout=0.0))
    monkeypatch.setattr(kernels, "_lstm_built", "g++: not found")  # what a failed build leaves
    monkeypatch.setattr(kernels, "loops_faster", lambda precision, dev: True)
    assert kernels.resolve_lstm_kernel("auto", "bf16", CPU, model) == "torch"
    err = capsys.readouterr().err
    assert "torch's LSTM kernel" in err and "g++: not found" in err and "install a C++ compiler" in err
    with pytest.raises(UserError, match="--lstm-kernel loops: lstm.cpp did not build .g\\+\\+: not found.*--lstm-kernel torch"):
        kernels.resolve_lstm_kernel("loops", "fp32", CPU, model)


def test_a_run_trained_through_the_loops_learns_what_torchs_kernel_learns(tmp_path, sonnets):
    (tmp_path / "s.txt").write_text(sonnets[:30000])
    runs = {}
    for kernel in ("torch", "loops"):
        runs[kernel] = storyloom.train([str(tmp_path / "s.txt")], out=tmp_path / kernel, steps=12, progress=False,
                                       device="cpu", deterministic=True, lstm_kernel=kernel,
                                       **{**TINY, "layers": 2, "dropout": 0.0, "log_every": 1})
        assert Run.open(runs[kernel]).info()["lstm_kernel"] == kernel
    loss = {k: [r["train_loss"] for r in storyloom.api.metrics(r) if "train_loss" in r] for k, r in runs.items()}
    assert len(loss["loops"]) == 12
    assert max(abs(a - b) for a, b in zip(loss["loops"], loss["torch"])) < 1e-3  # fp32: the same steps
    assert loss["loops"][-1] < loss["loops"][0]
