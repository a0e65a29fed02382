"""Where and how the arithmetic runs: device, precision, threads, seeds."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from .config import DEVICES
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


def _cpu_has_native_bf16() -> bool:
    # AMX tiles or AVX512-BF16 make bf16 matmuls faster than fp32; without
    # them bf16 is emulated and slower, so `auto` stays in fp32.
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def native_bf16(dev: torch.device) -> bool:
    if dev.type == "cuda":
        # cuDNN's RNNs take bf16 from cuDNN 9.13 on (PyTorch PR 164411); before it a bf16 LSTM has
        # no CUDA kernel at all, so `auto` stays in fp32 there.
        cudnn = torch.backends.cudnn.version() or 0
        return torch.cuda.is_bf16_supported() and torch.cuda.get_device_capability(dev)[0] >= 8 and cudnn >= 91300
    return _cpu_has_native_bf16()


def resolve_precision(precision: str, dev: torch.device) -> str:
    if precision == "auto":
        return "bf16" if native_bf16(dev) else "fp32"
    return precision


def autocast(precision: str, dev: torch.device):
    """Matmuls and the LSTM kernel in bf16; losses and optimizer state stay fp32."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=torch.bfloat16)


def physical_cores() -> int:
    """Cores this process may run on, counting a core's hyperthreads once."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for c in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list") as f:
                cores.add(f.read().strip())
        except OSError:  # no sysfs topology (not Linux, or a container hiding it): count logical CPUs
            return len(cpus)
    return max(len(cores), 1)


def set_threads(n: int = 0) -> int:
    """Use physical cores: two threads sharing a core's matrix units slow GEMM-bound work down."""
    if n <= 0:
        n = physical_cores()
    torch.set_num_threads(n)
    return n


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
    torch.use_deterministic_algorithms(on)
