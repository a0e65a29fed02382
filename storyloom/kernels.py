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
through torch's fp32 matmul, MKL's AVX2 code on AMD. Which wins depends on the
machine, and most machines were never measured (an Intel CPU with AMX, Zen 4,
laptops), so `--lstm-kernel auto` times a few training steps of each on the
machine, the first time a model of its shapes trains there, and keeps the
answer (`resolve_lstm_kernel`: about half a second on the Zen 5 in bf16, picking the
loops in bf16 and torch's kernel in fp32 in every trial, as the runs above).
No library offers an LSTM whose step products go
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
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from .cpu import cpu_info
from .errors import UserError
from .files import write_atomic
from .runtime import allowed_cpus, onednn_isa_cap, others_busy, reading

STALE_LOCK = 600  # seconds: a build takes 10-30, so an older lock is a killed build's
# -fopenmp: C++ loops split rows over torch's own OpenMP threads (the wheel's libgomp.so.1, which the build links
# by that name). Apple's clang has no -fopenmp: on a Mac the loops run on one thread.
OPENMP = [] if sys.platform == "darwin" else ["-fopenmp"]


def user_cache() -> Path:
    """The user's cache folder: ~/Library/Caches on a Mac, else $XDG_CACHE_HOME or ~/.cache."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def first_line(e: BaseException) -> str:
    """An error's first line (its type's name where it has no text): what a one-line note quotes of it."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


UNWRITABLE = "cannot write the build folder"  # how compile_cpp's error for a folder, not a compiler, begins


def remedy(why: str) -> str:
    """What a user does about a build that failed for `why` (a first line of compile_cpp's error)."""
    if why.startswith(UNWRITABLE):
        return "set TORCH_EXTENSIONS_DIR (or XDG_CACHE_HOME) to a folder you can write"
    return "install a C++ compiler (g++)"


def cache_root() -> Path:
    """Where torch.utils.cpp_extension builds by default ($TORCH_EXTENSIONS_DIR, else torch_extensions in the
    user's cache folder), worked out without importing it: that import (setuptools) and its up-to-date check took
    about 90 ms of a cold first character. Where this guesses wrong, compile_cpp() goes the long way."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    return (user_cache() / "torch_extensions").resolve()


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
    try:  # a read-only or missing home (a container's arbitrary user) fails here, not for want of a compiler
        where.mkdir(parents=True, exist_ok=True)
        if not os.access(where, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise OSError(f"{UNWRITABLE} {where.parent} ({e.strerror or e})") from e
    if not (where / f"{name}.so").exists():
        print(f"storyloom: building {what} (once; 10-30 s)", file=sys.stderr, flush=True)
    bindir = str(Path(sys.executable).parent)  # pip's ninja, which torch's builder runs by name, lives here
    if shutil.which("ninja") is None and shutil.which("ninja", path=bindir):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    lock = where / "lock"  # torch's builder holds it while it builds, and waits on it for ever if it is left
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK:  # by a build killed mid-way
        lock.unlink(missing_ok=True)
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
                _lstm_built = first_line(e)[:200]
    return _lstm_built


TRIAL_FLOPS = 1e9  # a training step's LSTM arithmetic below which auto trains with torch's kernel untimed
TRIAL_ROUNDS = 5  # timed steps of each kernel, alternated, after TRIAL_WARMUP untimed ones each
# Untimed steps of each kernel first: oneDNN builds its LSTM primitive and lstm.cpp its buffers in the first, and
# torch's kernel's second step still took 1.15-1.3x its later ones on the Zen 5 (bf16 and fp32; the loops' had
# settled), which put one slow step into torch's five.
TRIAL_WARMUP = 2
# Cores other processes may keep busy, on average, beyond the CPUs the trial's threads leave free, while auto
# times the kernels, for its answer to be kept. A busy neighbour on the threads' cores slows the two unequally and
# unsteadily: on 2 Zen 5 cores the loops' fp32 speedup was 0.66-0.67 alone and 0.42-0.87 beside one
# (benchmarks/kernel_choice.py --neighbour alternate), where others_busy read 0.00-0.01 and 0.61-0.76. A choice
# kept for good must come from a quiet machine; a busier one's trains this run only. Work on the CPUs the threads
# leave free (a big machine's other jobs, `--threads` below the cores) takes nothing from the race.
QUIET = 0.25


def step_flops(model: torch.nn.Module, B: int, T: int) -> float:
    """Arithmetic of one training step's LSTMs (forward, and backward at twice its cost) at batch (B, T)."""
    return sum(3 * 2 * 4 * m.hidden_size * ((m.input_size if l == 0 else m.hidden_size) + m.hidden_size) * B * T
               for m in model.modules() if isinstance(m, torch.nn.LSTM) for l in range(m.num_layers))


def choices_path() -> Path:
    """Where auto keeps each machine's timed choice: storyloom's folder in the user's cache folder."""
    return user_cache() / "storyloom" / "lstm-kernels.json"


def choice_key(precision: str, model: torch.nn.Module, B: int, T: int) -> str:
    """What a timed choice holds for: this CPU, the instructions ATen and oneDNN may use on it (lstm.cpp is built
    for ATen's; a cap on oneDNN's changes both kernels' products, and below AVX-512 refuses lstm.cpp's bf16 ones),
    its threads, torch, lstm.cpp, the precision and the shapes."""
    info = cpu_info()
    shapes = [(m.input_size, m.hidden_size, m.num_layers) for m in model.modules() if isinstance(m, torch.nn.LSTM)]
    source = hashlib.sha256(LSTM_SOURCE.read_bytes()).hexdigest()[:12]
    isa = f"{torch.backends.cpu.get_cpu_capability()}, oneDNN up to {onednn_isa_cap() or 'all'}"
    return (f"{info.model} (family {info.family} model {info.model_number}), {isa}, {torch.get_num_threads()} "
            f"threads, torch {torch.__version__}, lstm.cpp {source}, {precision}, batch {B}x{T}, lstm {shapes}")


def read_choices(path: Path) -> dict:
    try:
        choices = json.loads(path.read_text())
        return choices if isinstance(choices, dict) else {}
    except (OSError, ValueError):  # none yet, or unreadable: timed again, and written whole
        return {}


def timed_choice(trial: Callable[[str], float]) -> tuple[str, dict[str, float], float | None]:
    """The faster kernel by `trial` (seconds of one training step through a kernel), each one's median, and the
    cores other processes kept busy meanwhile (runtime.others_busy; None: unknown). Alternated, each kernel first in
    turn, after TRIAL_WARMUP untimed steps each, so a slow spell of a shared machine falls on both."""
    before = reading()
    for _ in range(TRIAL_WARMUP):
        for kernel in ("torch", "loops"):
            trial(kernel)
    times: dict[str, list[float]] = {"torch": [], "loops": []}
    for r in range(TRIAL_ROUNDS):
        for kernel in (("torch", "loops") if r % 2 == 0 else ("loops", "torch")):
            times[kernel].append(trial(kernel))
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    # The faster, without a margin for torch's kernel: on the Zen 5 its bf16 step moved from 30 to 44 ms from one
    # process to the next and the loops' stayed at 29-32, so a near tie in the timing process is a loss for torch's
    # kernel in others (a margin of 1.03 kept torch's in 1 trial of 6 where whole runs trained 1.06x through the loops).
    others = others_busy(before, reading(), allowed_cpus())
    return ("loops" if median["loops"] < median["torch"] else "torch"), median, others


def resolve_lstm_kernel(kernel: str, precision: str, dev: torch.device, model: torch.nn.Module, B: int, T: int,
                        trial: Callable[[str], float], say: Callable[[str], None] | None = None,
                        started: str | None = None) -> str:
    """`--lstm-kernel` (config.LSTM_KERNELS) for this run of `model` at batch (B, T): "torch" or "loops", building
    lstm.cpp where loops run. auto times both on this machine, the first time, with `trial` (seconds of one
    training step through a kernel, leaving the model as it was) and keeps the answer (choices_path(), one per
    choice_key), so a machine's runs all train alike, unless other processes kept more than QUIET cores busy
    beyond those its threads leave free meanwhile (then it trains this run only); on a GPU, without an LSTM or
    under TRIAL_FLOPS a step it is torch's kernel, untimed. A resumed run's auto takes `started`, the kernel the
    run recorded, as its answer instead, whatever a timing would say now (a cleared cache, other threads). `say`
    (default: standard error) hears the one line said when a choice is timed or lstm.cpp cannot be built. loops
    asked for where it cannot run, or cannot be built, is an error; auto falls back to torch's kernel."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    lstm = any(isinstance(m, torch.nn.LSTM) for m in model.modules())
    if kernel == "torch" or (kernel == "auto" and not (lstm and dev.type == "cpu" and step_flops(model, B, T) >= TRIAL_FLOPS)):
        return "torch"
    if not lstm:
        raise UserError("--lstm-kernel loops trains the lstm cell; this model has none: use --lstm-kernel auto")
    if dev.type != "cpu":
        raise UserError(f"--lstm-kernel loops runs on a CPU; this run trains on {dev.type}: use --lstm-kernel auto")
    key, path = choice_key(precision, model, B, T), choices_path()
    known = None
    if kernel == "auto":  # the kernel a resumed run started with, else the answer kept for this machine
        entry = {"kernel": started} if started else read_choices(path).get(key)
        known = entry.get("kernel") if isinstance(entry, dict) else None
    if known == "torch":  # timed here before, or the run started with it: nothing to build
        return "torch"
    why = build_lstm()
    if why and kernel == "loops":
        raise UserError(f"--lstm-kernel loops: lstm.cpp did not build ({why}); {remedy(why)}, "
                        "or use --lstm-kernel torch")
    if why:
        if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):  # elsewhere no build could help
            say(f"storyloom: training with torch's LSTM kernel, the C++ recurrence did not build ({why}); "
                f"{remedy(why)} to let auto time it here")
        return "torch"
    if kernel == "loops" or known == "loops":
        return "loops"
    try:
        choice, median, others = timed_choice(trial)
    except RuntimeError as e:  # a kernel that fails here (a oneDNN without the packed product): the reference trains
        say(f"storyloom: training with torch's LSTM kernel, the C++ recurrence failed its timed trial here "
            f"({first_line(e)[:200]}); --lstm-kernel torch says so for good")
        return "torch"
    if not quiet(others):
        kept = (f"not kept, as other processes kept {others:.1f} of the {allowed_cpus()} CPUs busy while it timed on "
                f"{torch.get_num_threads()} threads, so the next run times again")
    else:
        kept = keep_choice(path, key, choice, median, others)
    say(f"storyloom: training the LSTM through {'loops, the C++ recurrence' if choice == 'loops' else 'torch, its fused kernel'}"
        f", timed on this machine for this model: {median['torch'] * 1e3:.1f} ms a step through torch, "
        f"{median['loops'] * 1e3:.1f} ms through loops; {kept} (--lstm-kernel torch|loops names one)")
    return choice


def quiet(others: float | None) -> bool:
    """Whether a trial while other processes kept `others` cores busy (runtime.others_busy; None: unknown) may be
    kept: at most QUIET beyond the CPUs this process's threads leave free."""
    return others is None or others <= max(0, allowed_cpus() - torch.get_num_threads()) + QUIET


def keep_choice(path: Path, key: str, choice: str, median: dict[str, float], others: float | None) -> str:
    """Keep auto's answer under `key` in the choices file; what the one line says of it."""
    choices = read_choices(path)  # again: another run may have kept a choice while this one timed
    choices[key] = {"kernel": choice, "ms_per_step": {k: round(v * 1e3, 2) for k, v in median.items()},
                    "others_busy": None if others is None else round(others, 2),
                    "timed": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, (json.dumps(choices, indent=1, sort_keys=True) + "\n").encode())
        return f"kept in {path}"
    except OSError as e:  # a read-only home: timed again next run, the run itself unharmed
        return f"not kept ({e.strerror or e})"


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
