"""Where and how the arithmetic runs: device, precision, threads, seeds."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import random
import signal
import sys
import threading
import time

import numpy as np
import torch

from .config import DEVICES
from .cpu import cpu_info, physical_cores
from .errors import UserError


def device(name: str = "auto") -> torch.device:
    if name not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        ieee_fp32_on_cuda()
    return torch.device(name)


def ieee_fp32_on_cuda() -> None:
    """fp32 means fp32: cuDNN runs fp32 LSTMs in TF32 (10-bit mantissa) unless told not to.

    TF32 would make `--precision fp32` a third precision on GPUs only, break
    the step-equals-forward and evaluation checks at 1e-5, and buy nothing
    storyloom needs: the fast GPU path is bf16 autocast, which this leaves alone.
    """
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is not None and hasattr(rnn, "fp32_precision"):  # torch >= 2.9
        rnn.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False


def onednn_isa_cap() -> str | None:
    """The ceiling set on the instructions oneDNN (bf16 matmuls, the LSTM kernel) uses, None where none is:
    ONEDNN_MAX_CPU_ISA (DNNL_ before oneDNN 2.5). `AVX512_CORE_BF16` runs an AMX CPU as one without AMX."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or None


def onednn_may_use_amx() -> bool:
    """Whether a cap leaves oneDNN AMX: the cap's names for AMX and above contain "AMX", and "ALL" lifts it."""
    cap = (onednn_isa_cap() or "ALL").upper()
    return "AMX" in cap or cap == "ALL"


# oneDNN's instruction caps (its `cpu_isa` names) that leave out AVX512-BF16's products. Under them bf16 is
# emulated: a 512-square bf16 product took 4.5x its time under AVX512_CORE than under AVX512_CORE_BF16 on a Zen 5,
# and below AVX-512 oneDNN's LSTM has no bf16 form and lstm.cpp's packed bf16 weights are refused.
BELOW_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"})


def onednn_may_use_bf16() -> bool:
    """Whether a cap leaves oneDNN the AVX512-BF16 products (a name it does not list is taken as leaving them)."""
    return (onednn_isa_cap() or "ALL").upper() not in BELOW_BF16


def _cpu_has_native_bf16() -> bool:
    # Whether bf16 trains faster than fp32 on this CPU (benchmarks/README.md, "bf16 or fp32 by machine kind").
    # AMX tiles: 2.1x fp32 (Intel Sapphire Rapids). AVX512-BF16 on AMD: 1.35-1.6x (EPYC; Zen 5 measured again,
    # with freed memory kept: 1.3-1.5x through torch's LSTM kernel, 1.5-1.6x through kernels.py's). AVX512-BF16 on
    # Intel without AMX (AMX hidden, or oneDNN capped below it): 0.71x, oneDNN's bf16 kernels there run below
    # its fp32 ones, so fp32. Without either, bf16 is emulated and slower: fp32.
    info = cpu_info()
    vendor, flags = info.vendor, info.flags
    if "amx_bf16" in flags and onednn_may_use_amx():
        return True
    return vendor == "AuthenticAMD" and "avx512_bf16" in flags and onednn_may_use_bf16()


def native_bf16(dev: torch.device) -> bool:
    if dev.type == "cuda":
        # cuDNN's RNNs take bf16 from cuDNN 9.13 on (PyTorch PR 164411); before it a bf16 LSTM has
        # no CUDA kernel at all, so `auto` stays in fp32 there.
        cudnn = torch.backends.cudnn.version() or 0
        return torch.cuda.is_bf16_supported() and torch.cuda.get_device_capability(dev)[0] >= 8 and cudnn >= 91300
    # the kernel is asked too, once: a flag the CPU reports is not always one its libraries may use
    return _cpu_has_native_bf16() and bf16_lstm_runs(dev)


@functools.cache
def bf16_lstm_runs(dev: torch.device) -> bool:
    """Whether this device's LSTM kernel takes bf16 at all. oneDNN's has no bf16 form without AVX-512 or AMX
    (AMD Zen 3, Intel before Skylake-X, or ONEDNN_MAX_CPU_ISA=AVX2) and fails to build its primitive deep in the
    first step. Asking the kernel itself, once, is the one test that matches what training and scoring call."""
    with torch.random.fork_rng(devices=[]):  # the probe's weights must not move the seeded stream of whoever asks
        lstm = torch.nn.LSTM(1, 1).to(dev)
    try:
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            lstm(torch.zeros(1, 1, 1, device=dev))
    except RuntimeError:
        return False
    return True


def resolve_precision(precision: str, dev: torch.device) -> str:
    if precision == "auto":
        return "bf16" if native_bf16(dev) else "fp32"
    if precision == "bf16" and not bf16_lstm_runs(dev):
        where = (f"this GPU ({torch.cuda.get_device_name(dev)}, cuDNN {torch.backends.cudnn.version()})"
                 if dev.type == "cuda" else f"this CPU ({cpu_info().model or 'unknown model'})")
        need = "cuDNN 9.13 or newer" if dev.type == "cuda" else "AVX-512 or AMX, which oneDNN's bf16 needs"
        raise UserError(f"--precision bf16: {where} has no bf16 LSTM kernel (that needs {need}); "
                        "use --precision fp32, or auto, which picks bf16 only where it is native")
    return precision


def autocast(precision: str, dev: torch.device):
    """Matmuls and the LSTM kernel in bf16; losses and optimizer state stay fp32."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=torch.bfloat16)


def keep_freed_memory() -> bool:
    """Let this process reuse the memory it frees instead of handing it back to the OS at once; False where the C
    library has no such setting (not glibc).

    glibc gives a freed block over 128 KB back to the OS (an mmap'd block, or the top of its heap past 128 KB),
    and a training step allocates and frees the same large buffers every step (activations, gradients, the
    recurrence's saved gates), so each step faulted them in again, page by page: 2,600-5,900 minor page faults a
    step through kernels.py's recurrence and 11,000-11,300 through torch's kernel (default preset, bf16, 2 AMD
    Zen 5 cores). Kept, that falls to under 25, and a step from 36-41 ms to 32-33 through the recurrence, from
    53-59 to 34-41 through torch's kernel (benchmarks/README.md, "Fast on every machine, on an AMD EPYC Zen 5").
    What is kept is what the process already used at its peak. jemalloc or tcmalloc do this too, but only when
    preloaded before Python starts.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):  # musl, for one, has no mallopt
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    # No block is mapped on its own (oneDNN's LSTM workspace is over the 32 MB that the mapping threshold can be
    # raised to), and the heap is not trimmed: freed memory stays for the next step's blocks.
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


def set_threads(n: int = 0) -> int:
    """Use physical cores: two threads sharing a core's matrix units slow GEMM-bound work down.

    n = 0 (the default): every physical core, and `pace()` fits the count to
    the cores other processes leave free; n > 0: exactly n threads, always.
    """
    global pacer
    if n <= 0:
        n = physical_cores()
        pacer = Pacer(n) if n > 1 and _cpu_jiffies() is not None else None
    else:
        pacer = None
    torch.set_num_threads(n)
    return n


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of the CPUs this process may run on, from /proc/stat; None off Linux."""
    cpus = {f"cpu{c}" for c in (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else ())}
    busy = total = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name in cpus:
                    v = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
                    total += sum(v)
                    busy += sum(v) - v[3] - v[4]
    except (OSError, ValueError):
        return None
    return (busy, total) if total else None


Reading = tuple[float, float, tuple[int, int] | None]  # (wall clock, this process's CPU time, _cpu_jiffies())


def reading() -> Reading:
    """How busy this process's CPUs have been so far; two readings give others_busy between them."""
    return time.perf_counter(), time.process_time(), _cpu_jiffies()


def allowed_cpus() -> int:
    """The logical CPUs this process may run on (what _cpu_jiffies counts)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def others_busy(a: Reading, b: Reading, cores: int) -> float | None:
    """The cores other processes kept busy between readings a and b, on average: every busy jiffy of this
    process's `cores` CPUs, less this process's CPU time (its threads spinning while they wait count as its own).
    None where /proc/stat says nothing, or no time passed."""
    (t0, p0, j0), (t1, p1, j1) = a, b
    if j0 is None or j1 is None or j1[1] <= j0[1] or t1 <= t0:
        return None
    busy = cores * (j1[0] - j0[0]) / (j1[1] - j0[1])  # cores busy, ours and others'
    return max(0.0, busy - (p1 - p0) / (t1 - t0))


class Pacer:
    """Fits the thread count to the cores other processes leave free.

    PyTorch's worker threads spin while they wait for each other; when another
    busy process takes one of the cores, every parallel region waits for a
    thread that is not running, and work that shares the cores goes 3 to 15
    times slower instead of 2 (benchmarks/contention.py). Fewer spinning
    threads is the cure, but fewer threads cost a third of the speed on an
    idle machine. So, every WINDOW seconds of work, the pacer reads how busy
    this process's CPUs were (/proc/stat) and how much of that was this
    process (its CPU time): the rest is other processes, and the threads are
    the cores left, between 1 and every core. A change needs two readings in a row.
    """

    WINDOW = 0.5  # seconds of work between readings: a jiffy is 10 ms

    def __init__(self, full: int, read=_cpu_jiffies, clock=time.perf_counter, cpu_time=time.process_time):
        self.full, self.n, self.read, self.clock, self.cpu_time = full, full, read, clock, cpu_time
        self.last: Reading | None = None
        self.wanted = full  # what the last reading asked for
        self.cores = allowed_cpus()

    def __call__(self) -> int:
        now = self.clock()
        if self.last is not None and now - self.last[0] < self.WINDOW:
            return self.n
        now_reading: Reading = (now, self.cpu_time(), self.read())
        others = None if self.last is None else others_busy(self.last, now_reading, self.cores)
        if others is not None:
            target = max(1, min(self.full, round(self.cores - others)))
            if target != self.n and target == self.wanted:
                self.n = target
                torch.set_num_threads(target)
            self.wanted = target
        self.last = now_reading
        return self.n


pacer: Pacer | None = None  # set by set_threads(0); None: a fixed thread count


def pace() -> None:
    """Called once per unit of work (a training step, an evaluation chunk, a written token): keeps the thread count fitted."""
    if pacer is not None:
        pacer()


@contextlib.contextmanager
def stop_signals(handler):
    """SIGINT and SIGTERM call `handler(signum, frame)` inside the block, the previous handlers after it.
    Outside the main thread Python cannot set handlers, and this does nothing."""
    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    """Deterministic kernels only (an error names any op that has none)."""
    if on:
        # cuBLAS needs a fixed workspace to be deterministic; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # cuDNN's autotuner may pick another algorithm in a resumed process.
        torch.backends.cudnn.benchmark = False
        # A CPU kernel may sum in another order with another thread count: keep the count fixed.
        global pacer
        pacer = None
    torch.use_deterministic_algorithms(on)
