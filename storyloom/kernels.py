"""C++ built for this machine on first use: the builder, and the LSTM's recurrence for training (lstm.cpp).

torch's fused LSTM (oneDNN on a CPU) runs a training batch's recurrence as one
kernel. On 2 cores of an AMD EPYC Zen 5 in bf16 it ran at half the rate of its
own products (its products and GEMMs alone, the floor of any such recurrence,
took 24-26 ms a batch of the default preset where it took 40-52), and training
through lstm.cpp ran 1.28-1.56x as fast, at 63-67% of the bf16 GEMM roofline
where torch's kernel ran at 40-49%; once training kept its freed memory
(runtime.keep_freed_memory, which sped torch's kernel more), 1.15-1.20x, at
67-70% against 57-59% of a roofline timed before and after the trainers
(benchmarks/README.md, "Fast on every machine, on an AMD EPYC Zen 5"). In
fp32 the loops were slower: a batch 0.92-0.97x oneDNN's on an AVX2-only Zen 3,
training 0.66-0.96x on the Zen 5, where half its step is sequence-wide GEMMs
through torch's fp32 matmul, MKL's AVX2 code on AMD. So
`--lstm-kernel auto` runs lstm.cpp where it measured faster (`loops_faster`)
and torch's kernel elsewhere. No library offers an LSTM whose step products go
through a weight packed once a batch with the gate arithmetic fused around
them, so lstm.cpp is hand-written; it is tested against `nn.LSTM`.

The recurrence (`Recurrence`): the input projection of the whole sequence is
one GEMM (autograd differentiates it: its weight gradient is one GEMM over
every step); each step is one product h (B, H) @ W_hh^T through oneDNN with
W_hh packed once a batch, and one vectorised pass over the (B, 4H) gates that
saves them; the backward walks the steps back computing only the recurrent
part, then the recurrent weight's gradient as one GEMM over the sequence.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .cpu import cpu_info
from .errors import UserError

STALE_LOCK = 600  # seconds: a build takes 10-30, so an older lock is a killed build's
# -fopenmp: C++ loops split rows over torch's own OpenMP threads (the wheel's libgomp.so.1, which the build links
# by that name). Apple's clang has no -fopenmp: on a Mac the loops run on one thread.
OPENMP = [] if sys.platform == "darwin" else ["-fopenmp"]


def cache_root() -> Path:
    """Where torch.utils.cpp_extension builds by default ($TORCH_EXTENSIONS_DIR, else torch_extensions in the
    user's cache folder), worked out without importing it: that import (setuptools) and its up-to-date check took
    about 90 ms of a cold first character. Where this guesses wrong, compile_cpp() goes the long way."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    base = Path.home() / "Library" / "Caches" if sys.platform == "darwin" else \
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (base / "torch_extensions").resolve()


def compile_cpp(source: Path, flags: list[str], prefix: str, what: str) -> None:
    """Load `source` compiled with `flags` as a torch library (its ops under torch.ops), building it the first time
    (`what` names it in the one line said then); raises where it cannot be built."""
    # A build per source, flags, torch and Python: each links against its own headers and libraries, so a
    # build found under its name is this source's, and is loaded as it is.
    key = hashlib.sha256(f"{source.read_text()}{flags}{torch.__version__}{sys.version}".encode()).hexdigest()[:12]
    name = f"{prefix}_{key}"
    try:
        torch.ops.load_library(str(cache_root() / name / f"{name}.so"))
        return
    except OSError:  # not built yet, or a build killed while linking it: built (again) below
        pass
    from torch.utils import cpp_extension  # imported on first use: it pulls in setuptools

    where = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()) / name
    if not (where / f"{name}.so").exists():
        print(f"storyloom: building {what} (once; 10-30 s)", file=sys.stderr, flush=True)
    bindir = str(Path(sys.executable).parent)  # pip's ninja, which torch's builder runs by name, lives here
    if shutil.which("ninja") is None and shutil.which("ninja", path=bindir):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    lock = where / "lock"  # torch's builder holds it while it builds, and waits on it for ever if it is left
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK:  # by a build killed mid-way
        lock.unlink(missing_ok=True)
    where.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(name, [str(source)], extra_cflags=flags, extra_ldflags=OPENMP, build_directory=str(where),
                       is_python_module=False, verbose=False)


LSTM_SOURCE = Path(__file__).with_name("lstm.cpp")
# at::vec's vectors as ATen's own kernels use them here: 16 floats with AVX-512 (full width on Zen 5 and Intel,
# two halves on Zen 4), else 8 with AVX2 and FMA, which every x86 CPU since 2013 has. The products are oneDNN's.
AVX512 = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
AVX2 = ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]


def lstm_flags() -> list[str]:
    return ["-O3", *(AVX512 if torch.backends.cpu.get_cpu_capability() == "AVX512" else AVX2), *OPENMP]


_lstm_built: str | None = None  # "" once loaded; else why it cannot be (None: not tried in this process)


def build_lstm() -> str:
    """Compile lstm.cpp once (or load the build cached on disk): "" when loaded, else one line saying why not."""
    global _lstm_built
    if _lstm_built is None:
        if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
            _lstm_built = f"this CPU's vector unit is {torch.backends.cpu.get_cpu_capability()}; lstm.cpp needs AVX2"
        else:
            try:
                compile_cpp(LSTM_SOURCE, lstm_flags(), "storyloom_lstm", "the C++ LSTM recurrence")
                _lstm_built = ""
            except Exception as e:  # no compiler, no ninja, headers missing: torch's kernel trains the same model
                _lstm_built = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return _lstm_built


def loops_faster(precision: str, dev: torch.device) -> bool:
    """Whether lstm.cpp trains faster than torch's kernel here, as measured: bf16 on AMD CPUs with AVX512-BF16
    (Zen 5: training 1.05-1.20x with freed memory kept, 1.28-1.56x before; Zen 4 has the same instructions at half
    width: predicted, not measured). Not fp32: training 0.66-0.96x on the Zen 5, a batch 0.92-0.97x on an
    AVX2-only Zen 3. Intel with AMX: not yet measured, so torch's kernel. (The AMD test is runtime's for native
    bf16 as well, but a separate measurement: the two may part on a new machine.)"""
    info = cpu_info()
    return (dev.type == "cpu" and precision == "bf16" and info.vendor == "AuthenticAMD"
            and "avx512_bf16" in info.flags)


def resolve_lstm_kernel(kernel: str, precision: str, dev: torch.device, model: torch.nn.Module) -> str:
    """`--lstm-kernel` (config.LSTM_KERNELS) for this run of `model`: "torch" or "loops", building lstm.cpp where
    loops run. auto falls back to torch's kernel, saying why, where lstm.cpp cannot be built; asked for by name,
    that is an error, as it is for a model without an LSTM or a GPU."""
    lstm = any(isinstance(m, torch.nn.LSTM) for m in model.modules())
    if kernel == "torch" or (kernel == "auto" and not (lstm and loops_faster(precision, dev))):
        return "torch"
    if not lstm:
        raise UserError("--lstm-kernel loops trains the lstm cell; this model has none: use --lstm-kernel auto")
    if dev.type != "cpu":
        raise UserError(f"--lstm-kernel loops runs on a CPU; this run trains on {dev.type}: use --lstm-kernel auto")
    why = build_lstm()
    if why and kernel == "loops":
        raise UserError(f"--lstm-kernel loops: lstm.cpp did not build ({why}); install a C++ compiler (g++), "
                        "or use --lstm-kernel torch")
    if why:
        print(f"storyloom: training with torch's LSTM kernel, the C++ recurrence did not build ({why}); install a "
              "C++ compiler (g++) for faster training here", file=sys.stderr, flush=True)
        return "torch"
    return "loops"


_active = threading.local()  # the kernel the LSTMs of this thread's forward calls run: "loops" or unset


@contextlib.contextmanager
def lstm_kernel(kernel: str):
    """Within it, an LSTM's forward with gradients on a CPU runs lstm.cpp's recurrence where `kernel` is "loops"
    (resolve_lstm_kernel's answer); like autocast, the trainer's step opens it around the model's forward."""
    before = getattr(_active, "kernel", None)
    _active.kernel = kernel
    try:
        yield
    finally:
        _active.kernel = before


def loops_active(x: torch.Tensor) -> bool:
    """Whether an LSTM's forward over x runs lstm.cpp's recurrence now: inside lstm_kernel("loops"), gradients
    on, on a CPU. Evaluation and writing keep torch's kernel, which keeps nothing for a backward."""
    return getattr(_active, "kernel", None) == "loops" and torch.is_grad_enabled() and x.device.type == "cpu"


class Recurrence(torch.autograd.Function):
    """(xp (T, B, 4H): x W_ih^T + b, h0, c0 (B, H), W_hh (4H, H)) -> (y (T, B, H) in `dtype`, C_T (B, H) fp32): the
    step products, the inputs and the outputs in `dtype` (bf16 under autocast, as torch's kernel gives them), the
    gates and the cell state in fp32."""

    @staticmethod
    def forward(ctx, xp, h0, c0, W_hh, dtype):
        G, C, TC, Y, W_packed_t = torch.ops.storyloom_lstm.forward(xp, h0.float().contiguous(), c0.float().contiguous(),
                                                                   W_hh, dtype == torch.bfloat16)
        ctx.save_for_backward(G, C, TC, Y, W_packed_t)
        ctx.xp_dtype = xp.dtype
        return Y[1:], C[-1].clone()

    @staticmethod
    def backward(ctx, dy, dcT):
        G, C, TC, Y, W_packed_t = ctx.saved_tensors
        T, B, H4 = G.shape
        dy = dy if dy is not None else torch.zeros(T, B, H4 // 4)
        dc = dcT.float() if dcT is not None else torch.zeros(B, H4 // 4)
        dZ, dh0, dc0 = torch.ops.storyloom_lstm.backward(G, C, TC, W_packed_t, dy, dc)  # dZ (T, B, 4H) in dtype
        dW_hh = torch.mm(dZ.view(T * B, H4).t(), Y[:-1].reshape(T * B, H4 // 4)).float()  # one GEMM, every step
        return dZ.to(ctx.xp_dtype), dh0, dc0, dW_hh, None


def lstm_layers(x: torch.Tensor, weights: list[tuple[torch.Tensor, ...]], h0: torch.Tensor, c0: torch.Tensor,
                dropout: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """nn.LSTM's forward (batch first) through Recurrence: x (B, T, I), weights per layer (W_ih, W_hh, b_ih, b_hh),
    h0, c0 (L, B, H) -> y (B, T, H), h_T, C_T (L, B, H). `dropout` between layers, as nn.LSTM applies it."""
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32
    inp, hs, cs = x.transpose(0, 1), [], []  # (T, B, I)
    for l, (W_ih, W_hh, b_ih, b_hh) in enumerate(weights):
        if l:
            inp = F.dropout(inp, dropout, training=True)
        xp = F.linear(inp, W_ih, b_ih + b_hh)  # (T, B, 4H): one GEMM over the whole sequence, under autocast
        with torch.autocast("cpu", enabled=False):  # the recurrence casts for itself
            inp, c = Recurrence.apply(xp, h0[l], c0[l], W_hh, dtype)
        hs.append(inp[-1].float())
        cs.append(c)
    return inp.transpose(0, 1), torch.stack(hs), torch.stack(cs)
