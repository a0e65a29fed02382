"""kernels.py: the C++ LSTM recurrence for training against torch's own LSTM, and how a run picks it.

Every test that runs lstm.cpp builds it first (10-30 s once, cached like write.cpp): a machine without a C++
compiler fails test_the_recurrence_builds, naming the fix, instead of skipping what it cannot check.
"""

import importlib
import json
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


@pytest.fixture
def lstm_cpp():
    """lstm.cpp loaded into this process, for a test that runs it alone (with -k) as in the whole file."""
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


@pytest.mark.parametrize("layers, B, T, H, threads", [(1, 3, 7, 16, 1), (2, 4, 5, 20, 1), (1, 1, 1, 8, 1),
                                                       (2, 5, 4, 20, 3)])
def test_the_loops_equal_nn_lstm_in_outputs_and_every_gradient(layers, B, T, H, threads, lstm_cpp):
    # 3 threads (the suite runs on 1) split each step's rows and W_hh's transpose at uneven places
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_the_loops_against_nn_lstm(layers, B, T, H)
    finally:
        torch.set_num_threads(before)


def check_the_loops_against_nn_lstm(layers: int, B: int, T: int, H: int) -> None:
    torch.manual_seed(layers * 100 + H)
    lstm = LSTM(6, H, layers, dropout=0.0)
    e = torch.randn(B, T, 6)
    state = (torch.randn(layers, B, H) * 0.5, torch.randn(layers, B, H) * 0.5)
    ours, theirs = both(lstm, e, state, "loops"), both(lstm, e, state, "torch")
    assert ours.keys() == theirs.keys() and len(ours) == 6 + 4 * layers
    for k in theirs:
        assert relative(ours[k], theirs[k]) < 1e-5, k


def test_the_loops_in_bf16_stay_as_close_to_fp32_as_torchs_bf16_kernel(lstm_cpp):
    if not runtime.native_bf16(torch.device("cpu")):  # oneDNN packs bf16 weights only with AVX-512 or AMX
        pytest.skip("bf16 is not native on this CPU: --precision auto trains in fp32, --lstm-kernel auto with torch")
    torch.manual_seed(0)
    lstm = LSTM(6, 32, 1, dropout=0.0)
    e, state = torch.randn(4, 9, 6), (torch.zeros(1, 4, 32), torch.zeros(1, 4, 32))
    exact, ours, theirs = both(lstm, e, state, "torch"), both(lstm, e, state, "loops", torch.bfloat16), \
        both(lstm, e, state, "torch", torch.bfloat16)
    for k in exact:
        assert relative(ours[k], exact[k]) < max(3 * relative(theirs[k], exact[k]), 2e-2), k


def test_the_loops_run_only_where_asked_with_gradients_on_a_cpu(monkeypatch, lstm_cpp):
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


def test_dropout_between_layers_applies_in_training_only(lstm_cpp):
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


class Trial:
    """A kernel trial that costs what it is told and counts its calls."""

    def __init__(self, torch_s: float, loops_s: float):
        self.seconds, self.calls = {"torch": torch_s, "loops": loops_s}, 0

    def __call__(self, kernel: str) -> float:
        self.calls += 1
        return self.seconds[kernel]


def never(*_):
    raise AssertionError("called where nothing should be timed or built")


@pytest.fixture
def timed(monkeypatch, tmp_path):
    """auto's choices kept under tmp_path, any model timed, lstm.cpp taken as built; what it said, in `said`."""
    monkeypatch.setattr(kernels, "choices_path", lambda: tmp_path / "cache" / "lstm-kernels.json")
    monkeypatch.setattr(kernels, "TRIAL_FLOPS", 0)
    monkeypatch.setattr(kernels, "build_lstm", lambda: "")
    said = []
    return lambda kernel, precision, trial, model=None: kernels.resolve_lstm_kernel(
        kernel, precision, CPU, model or Model(LSTM(4, 8, 1, dropout=0.0)), 2, 3, trial, said.append), said


def test_auto_times_both_kernels_once_per_machine_and_model_and_keeps_the_faster(timed, tmp_path):
    resolve, said = timed
    faster_loops = Trial(2.0, 1.0)
    assert resolve("auto", "bf16", faster_loops) == "loops"
    assert faster_loops.calls == 2 * kernels.TRIAL_WARMUP + 2 * kernels.TRIAL_ROUNDS  # untimed steps, then rounds
    assert len(said) == 1 and "through loops" in said[0] and "2000.0 ms a step through torch" in said[0]
    assert "kept in" in said[0] and "--lstm-kernel torch|loops" in said[0]
    assert resolve("auto", "bf16", never) == "loops"  # kept: not timed again, and nothing said
    assert len(said) == 1
    faster_torch = Trial(1.0, 2.0)  # another precision is another choice
    assert resolve("auto", "fp32", faster_torch) == "torch" and faster_torch.calls
    assert resolve("auto", "fp32", never) == "torch"
    assert resolve("auto", "fp32", Trial(1.0, 2.0), Model(LSTM(4, 16, 1, dropout=0.0))) == "torch"  # other shapes
    kept = (tmp_path / "cache" / "lstm-kernels.json").read_text()
    assert kept.count('"kernel"') == 3 and "bf16, batch 2x3, lstm [(4, 8, 1)]" in kept


@pytest.mark.parametrize("env, value", [("ONEDNN_MAX_CPU_ISA", "AVX2"), ("ATEN_CPU_CAPABILITY", None)])
def test_fault_an_answer_kept_before_oneDNN_or_ATen_were_capped_is_timed_again(timed, monkeypatch, env, value):
    # lstm.cpp is built for ATen's vector unit, and under a cap on oneDNN both kernels' products change (below
    # AVX-512 lstm.cpp's bf16 products are refused): an answer kept without the cap is another machine's
    resolve, _ = timed
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert resolve("auto", "fp32", Trial(2.0, 1.0)) == "loops"
    if env == "ONEDNN_MAX_CPU_ISA":
        monkeypatch.setenv(env, value)
    else:
        other = "AVX2" if torch.backends.cpu.get_cpu_capability() != "AVX2" else "AVX512"
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: other)
    assert resolve("auto", "fp32", Trial(1.0, 2.0)) == "torch"  # timed again, and kept beside the first
    assert resolve("auto", "fp32", never) == "torch"


def test_fault_a_trial_beside_busy_processes_trains_its_run_and_keeps_nothing(timed, monkeypatch, tmp_path):
    resolve, said = timed
    readings = []
    monkeypatch.setattr(kernels, "allowed_cpus", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the trial's threads on every CPU
    monkeypatch.setattr(kernels, "others_busy", lambda a, b, cores: readings.append((a, b, cores)) or 0.7)
    assert resolve("auto", "bf16", Trial(2.0, 1.0)) == "loops"  # this run trains through the faster
    (before, after, cores) = readings[0]
    assert before[0] <= after[0] and cores == 2  # read around the trial
    assert "not kept, as other processes kept 0.7 of the 2 CPUs busy while it timed on 2 threads" in said[-1]
    assert "so the next run times again" in said[-1]
    assert not (tmp_path / "cache" / "lstm-kernels.json").exists()
    monkeypatch.setattr(kernels, "allowed_cpus", lambda: 8)  # the same neighbour on CPUs the threads leave free
    assert resolve("auto", "fp32", Trial(1.0, 2.0)) == "torch" and "kept in" in said[-1]
    monkeypatch.setattr(kernels, "allowed_cpus", lambda: 2)
    monkeypatch.setattr(kernels, "others_busy", lambda *_: kernels.QUIET)  # quiet enough, or no reading at all
    assert resolve("auto", "bf16", Trial(2.0, 1.0)) == "loops" and "kept in" in said[-1]
    monkeypatch.setattr(kernels, "others_busy", lambda *_: None)
    assert resolve("auto", "fp32", Trial(1.0, 2.0), Model(LSTM(4, 16, 1, dropout=0.0))) == "torch"
    assert "kept in" in said[-1]
    kept = json.loads((tmp_path / "cache" / "lstm-kernels.json").read_text())
    assert sorted(c["others_busy"] for c in kept.values() if c["others_busy"] is not None) == [kernels.QUIET, 0.7]


def test_auto_keeps_the_faster_by_any_margin_and_by_name_nothing_is_timed(timed):
    resolve, said = timed
    assert resolve("auto", "bf16", Trial(1.0, 1.0)) == "torch"
    assert resolve("auto", "fp32", Trial(1.0, 0.99)) == "loops"  # the faster, by any margin
    assert resolve("loops", "bf16", never) == "loops" and resolve("torch", "bf16", never) == "torch"


def test_auto_times_nothing_on_a_gpu_without_an_lstm_or_for_a_tiny_step(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "choices_path", lambda: tmp_path / "lstm-kernels.json")
    monkeypatch.setattr(kernels, "build_lstm", never)
    lstm = Model(LSTM(4, 8, 1, dropout=0.0))
    assert kernels.step_flops(lstm, 2, 3) == 3 * 2 * 4 * 8 * (4 + 8) * 2 * 3
    assert kernels.resolve_lstm_kernel("auto", "bf16", CPU, lstm, 2, 3, never) == "torch"  # under TRIAL_FLOPS
    monkeypatch.setattr(kernels, "TRIAL_FLOPS", 0)
    assert kernels.resolve_lstm_kernel("auto", "bf16", torch.device("cuda"), lstm, 2, 3, never) == "torch"
    assert kernels.resolve_lstm_kernel("auto", "bf16", CPU, Model(GRU(4, 8, 1, 0.0)), 2, 3, never) == "torch"
    assert not (tmp_path / "lstm-kernels.json").exists()


def test_a_kept_torch_choice_builds_nothing(timed, monkeypatch):
    resolve, _ = timed
    assert resolve("auto", "bf16", Trial(1.0, 2.0)) == "torch"
    monkeypatch.setattr(kernels, "build_lstm", never)
    assert resolve("auto", "bf16", never) == "torch"


def test_fault_a_damaged_or_unwritable_choices_file_times_again_and_trains(timed, tmp_path):
    resolve, said = timed
    (tmp_path / "cache").mkdir()
    path = tmp_path / "cache" / "lstm-kernels.json"
    path.write_text('{"half a file')
    assert resolve("auto", "bf16", Trial(2.0, 1.0)) == "loops"
    assert '"loops"' in path.read_text()  # written whole again
    path.write_text("[1, 2]")  # JSON, but not a file of choices
    assert resolve("auto", "bf16", Trial(2.0, 1.0)) == "loops"
    path.unlink()
    (tmp_path / "cache").rmdir()
    (tmp_path / "cache").write_text("")  # a file where the folder would go: unwritable, even for root
    assert resolve("auto", "bf16", Trial(2.0, 1.0)) == "loops"
    assert "not kept" in said[-1]


def test_fault_a_kernel_failing_its_trial_leaves_torchs_kernel_untimed_and_unkept(timed, tmp_path):
    resolve, said = timed

    def failing(kernel: str) -> float:
        if kernel == "loops":
            raise RuntimeError("could not create a primitive\nmore detail")
        return 1.0

    assert resolve("auto", "bf16", failing) == "torch"
    assert "failed its timed trial here (could not create a primitive)" in said[-1] and "\n" not in said[-1]
    assert not (tmp_path / "cache" / "lstm-kernels.json").exists()  # timed again next run


def test_fault_without_a_compiler_auto_trains_with_torchs_kernel_and_says_why(monkeypatch, capsys, tmp_path):
    model = Model(LSTM(4, 8, 1, dropout=0.0))
    monkeypatch.setattr(kernels, "_lstm_built", "g++: not found")  # what a failed build leaves
    monkeypatch.setattr(kernels, "choices_path", lambda: tmp_path / "lstm-kernels.json")
    monkeypatch.setattr(kernels, "TRIAL_FLOPS", 0)
    assert kernels.resolve_lstm_kernel("auto", "bf16", CPU, model, 2, 3, never) == "torch"
    err = capsys.readouterr().err
    assert "torch's LSTM kernel" in err and "g++: not found" in err and "install a C++ compiler" in err
    with pytest.raises(UserError, match="--lstm-kernel loops: lstm.cpp did not build .g\\+\\+: not found.*--lstm-kernel torch"):
        kernels.resolve_lstm_kernel("loops", "fp32", CPU, model, 2, 3, never)


def test_fault_an_unwritable_build_folder_trains_with_torchs_kernel_and_names_the_folder(monkeypatch, capsys, tmp_path):
    model = Model(LSTM(4, 8, 1, dropout=0.0))
    why = f"cannot write the build folder {tmp_path / 'home'} (Not a directory)"  # what compile_cpp raised
    monkeypatch.setattr(kernels, "_lstm_built", why)
    monkeypatch.setattr(kernels, "choices_path", lambda: tmp_path / "lstm-kernels.json")
    monkeypatch.setattr(kernels, "TRIAL_FLOPS", 0)
    assert kernels.resolve_lstm_kernel("auto", "bf16", CPU, model, 2, 3, never) == "torch"
    err = capsys.readouterr().err
    assert why in err and "set TORCH_EXTENSIONS_DIR (or XDG_CACHE_HOME) to a folder you can write" in err
    assert "compiler" not in err
    with pytest.raises(UserError, match="lstm.cpp did not build .cannot write the build folder.*a folder you can "
                                        "write, or use --lstm-kernel torch"):
        kernels.resolve_lstm_kernel("loops", "fp32", CPU, model, 2, 3, never)


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


def test_a_run_with_auto_times_the_kernels_once_and_records_its_answer(tmp_path, sonnets, monkeypatch, capsys):
    monkeypatch.setattr(kernels, "choices_path", lambda: tmp_path / "cache" / "lstm-kernels.json")
    monkeypatch.setattr(kernels, "TRIAL_FLOPS", 0)
    (tmp_path / "s.txt").write_text(sonnets[:30000])
    run = storyloom.train([str(tmp_path / "s.txt")], out=tmp_path / "a", steps=2, progress=False, device="cpu",
                          **{**TINY, "lstm_kernel": "auto"})
    said = [line for line in capsys.readouterr().err.splitlines() if "timed on this machine" in line]
    kept = json.loads((tmp_path / "cache" / "lstm-kernels.json").read_text())
    assert len(said) == 1 and len(kept) == 1
    (choice,) = [c["kernel"] for c in kept.values()]
    assert Run.open(run).info()["lstm_kernel"] == choice
    storyloom.train([str(tmp_path / "s.txt")], out=tmp_path / "b", steps=2, progress=False, device="cpu",
                    **{**TINY, "lstm_kernel": "auto"})
    assert "timed on this machine" not in capsys.readouterr().err
    assert Run.open(tmp_path / "b").info()["lstm_kernel"] == choice


def test_a_resumed_run_goes_on_through_the_kernel_it_started_with(tmp_path, sonnets, monkeypatch):
    path = tmp_path / "cache" / "lstm-kernels.json"
    monkeypatch.setattr(kernels, "choices_path", lambda: path)
    monkeypatch.setattr(kernels, "TRIAL_FLOPS", 0)
    (tmp_path / "s.txt").write_text(sonnets[:30000])
    for started, later in (("torch", "loops"), ("loops", "torch")):
        monkeypatch.setattr(kernels, "timed_choice", lambda trial, k=started: (k, {"torch": 1.0, "loops": 1.0}, 0.0))
        path.unlink(missing_ok=True)
        run = storyloom.train([str(tmp_path / "s.txt")], out=tmp_path / started, steps=2, progress=False, device="cpu",
                              **{**TINY, "lstm_kernel": "auto"})
        assert Run.open(run).info()["lstm_kernel"] == started
        kept = json.loads(path.read_text())  # the machine's answer changes (lstm.cpp rebuilt, the cache edited)
        path.write_text(json.dumps({key: {**v, "kernel": later} for key, v in kept.items()}))
        seen = []
        with monkeypatch.context() as m:
            m.setattr(importlib.import_module("storyloom.train").Trainer, "fit", lambda self, **_: seen.append(self.kernel))
            storyloom.train(resume=run, steps=4, progress=False)
        assert seen == [started]
