import pytest
import torch

from storyloom import cpu, runtime
from storyloom.errors import UserError


@pytest.mark.parametrize("cudnn, capability, want", [(91900, (9, 0), True), (91300, (8, 0), True), (91200, (9, 0), False),
                                                     (None, (9, 0), False), (91900, (7, 5), False)])
def test_auto_precision_on_cuda_needs_a_cudnn_that_runs_lstms_in_bf16(monkeypatch, cudnn, capability, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: cudnn)
    assert runtime.native_bf16(torch.device("cuda")) is want
    assert runtime.resolve_precision("auto", torch.device("cuda")) == ("bf16" if want else "fp32")
    assert runtime.resolve_precision("fp32", torch.device("cuda")) == "fp32"


@pytest.mark.parametrize("vendor, flags, cap, want", [
    ("GenuineIntel", {"avx2", "avx512_bf16", "amx_bf16", "amx_tile"}, None, "bf16"),  # Sapphire Rapids
    ("GenuineIntel", {"avx2", "avx512_bf16", "amx_bf16"}, "AVX10_1_512_AMX", "bf16"),
    ("GenuineIntel", {"avx2", "avx512_bf16", "amx_bf16"}, "all", "bf16"),
    ("GenuineIntel", {"avx2", "avx512_bf16", "amx_bf16"}, "AVX512_CORE_BF16", "fp32"),  # oneDNN kept off AMX
    ("GenuineIntel", {"avx2", "avx512_bf16"}, None, "fp32"),  # AMX hidden, or Cooper Lake
    ("AuthenticAMD", {"avx2", "avx512_bf16"}, None, "bf16"),  # Zen 4 and later
    ("AuthenticAMD", {"avx2", "avx512_bf16"}, "AVX512_CORE_BF16", "bf16"),
    ("AuthenticAMD", {"avx2", "avx512_bf16"}, "avx512_core", "fp32"),  # oneDNN kept off its bf16 products
    ("AuthenticAMD", {"avx2", "avx512_bf16"}, "AVX2", "fp32"),  # a Zen 3's instructions on a Zen 5
    ("AuthenticAMD", {"avx2"}, None, "fp32"),
    ("", set(), None, "fp32"),  # no /proc/cpuinfo
])
def test_auto_precision_on_a_cpu_is_bf16_only_where_it_trains_faster(monkeypatch, vendor, flags, cap, want):
    monkeypatch.setattr(runtime, "cpu_info", lambda: cpu.CPU(vendor, "", frozenset(flags)))
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    monkeypatch.setattr(runtime, "bf16_lstm_runs", lambda dev: True)
    assert runtime.resolve_precision("auto", torch.device("cpu")) == want
    assert runtime.resolve_precision("bf16", torch.device("cpu")) == "bf16"  # asked by name, given where it runs
    monkeypatch.setattr(runtime, "bf16_lstm_runs", lambda dev: False)  # flags that say more than the kernel runs
    assert runtime.resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_bf16_asked_by_name_where_the_lstm_kernel_has_none_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(runtime, "bf16_lstm_runs", lambda dev: False)
    monkeypatch.setattr(runtime, "cpu_info", lambda: cpu.CPU("AuthenticAMD", "AMD EPYC 7B13", frozenset({"avx2"})))
    with pytest.raises(UserError, match=r"--precision bf16: this CPU \(AMD EPYC 7B13\) .*--precision fp32"):
        runtime.resolve_precision("bf16", torch.device("cpu"))
    assert runtime.resolve_precision("fp32", torch.device("cpu")) == "fp32"


def test_the_bf16_lstm_probe_agrees_with_the_kernel_on_this_machine():
    # AMX and AVX-512 machines run a bf16 LSTM; AVX2-only ones (AMD Zen 3) refuse it: whichever this is, the probe
    # must say what nn.LSTM under autocast then does.
    lstm, x = torch.nn.LSTM(8, 16, batch_first=True), torch.randn(2, 5, 8)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(x)
        runs = True
    except RuntimeError:
        runs = False
    assert runtime.bf16_lstm_runs(torch.device("cpu")) is runs


def test_device_names_are_checked():
    with pytest.raises(UserError, match="--device must be one of auto, cpu, cuda, got 'tpu'"):
        runtime.device("tpu")
    assert runtime.device("cpu") == torch.device("cpu")
    assert runtime.device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU is visible"):
            runtime.device("cuda")


@pytest.mark.skipif(not hasattr(getattr(torch.backends.cudnn, "rnn", None), "fp32_precision"), reason="torch < 2.9")
def test_fp32_on_cuda_is_ieee_not_tf32(monkeypatch):
    rnn = torch.backends.cudnn.rnn
    monkeypatch.setattr(rnn, "fp32_precision", "tf32")  # torch's default: cuDNN LSTMs in TF32
    runtime.ieee_fp32_on_cuda()
    assert rnn.fp32_precision == "ieee"


def test_the_pacer_fits_the_threads_to_the_cores_others_leave_free(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    clock = iter(range(0, 100))
    state = {"busy": 0, "total": 0, "cpu": 0.0}

    def window(busy_cores: float, our_cores: float, cores: int = 2, seconds: float = 1.0):
        """What /proc/stat and this process's CPU time say one window later."""
        state["total"] += int(100 * cores * seconds)
        state["busy"] += int(100 * busy_cores * seconds)
        state["cpu"] += our_cores * seconds

    p = runtime.Pacer(2, read=lambda: (state["busy"], state["total"]), clock=lambda: float(next(clock)),
                      cpu_time=lambda: state["cpu"])
    p.cores = 2
    assert p() == 2  # the first reading only starts the window
    window(busy_cores=2.0, our_cores=2.0)
    assert p() == 2 and calls == []  # alone: every core is ours
    window(busy_cores=2.0, our_cores=1.3)  # a neighbour took 0.7 of a core
    assert p() == 2 and calls == []  # one reading is not enough
    window(busy_cores=2.0, our_cores=1.3)
    assert p() == 1 and calls == [1]
    window(busy_cores=2.0, our_cores=1.0)  # one thread, the neighbour on the other core: stay
    assert p() == 1
    window(busy_cores=1.0, our_cores=1.0)  # the neighbour has gone: a core is idle
    window(busy_cores=1.0, our_cores=1.0)
    assert p() == 1  # windows are read when work reports in, one reading per call
    window(busy_cores=1.0, our_cores=1.0)
    assert p() == 2 and calls == [1, 2]


def test_others_busy_is_every_busy_core_less_this_process():
    two_seconds = 2 * 100 * 2  # jiffies of 2 CPUs in 2 seconds
    a = (10.0, 5.0, (1000, 8000))
    assert runtime.others_busy(a, (12.0, 7.0, (1000 + two_seconds, 8000 + two_seconds)), 2) == 1.0  # 2 busy, 1 ours
    assert runtime.others_busy(a, (12.0, 9.0, (1000 + two_seconds, 8000 + two_seconds)), 2) == 0.0  # all ours
    assert runtime.others_busy(a, (12.0, 7.1, (1000 + 200, 8000 + two_seconds)), 2) == 0.0  # never below 0
    assert runtime.others_busy(a, (12.0, 7.0, None), 2) is None  # no /proc/stat
    assert runtime.others_busy(a, (10.0, 5.0, (1000, 8000)), 2) is None  # no time passed
    here = runtime.reading()
    assert here[0] > 0 and here[1] >= 0 and runtime.allowed_cpus() >= 1


def test_fixed_threads_and_deterministic_runs_keep_their_count():
    runtime.set_threads(1)
    assert runtime.pacer is None
    runtime.set_threads(0)
    runtime.set_deterministic(True)
    try:
        assert runtime.pacer is None
    finally:
        runtime.set_deterministic(False)
        torch.set_num_threads(1)


def test_freed_memory_is_kept_for_the_next_step():
    """A training step frees and allocates the same large buffers every step: kept, they are not faulted in again.
    A block of 40 MB is over anything glibc would keep by itself: without keep_freed_memory each one here took 532
    page faults."""
    import platform
    import resource

    import numpy as np

    if not runtime.keep_freed_memory():
        assert platform.libc_ver()[0] != "glibc", "glibc has mallopt: keep_freed_memory should have set it"
        pytest.skip("this C library has no mallopt: its own policy stands")
    faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt  # noqa: E731
    np.ones(40 << 20, dtype=np.uint8)
    before = faults()
    for _ in range(10):
        np.ones(40 << 20, dtype=np.uint8)
    assert (faults() - before) / 10 < 10
