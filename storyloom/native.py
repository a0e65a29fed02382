"""The writing loop for one stream in C++ (write.cpp), compiled once, used where it writes what Python would.

Writing at batch 1 is a dozen small tensor operations a character, and in
Python the calls between them took most of the time: the same loop in C++
wrote 10,261-10,831 characters a second where the Python loop wrote
3,129-3,149 (2 Intel cores), the same text for the same seed
(benchmarks/README.md, "Batch-1 writing"). No library offers a sampling
loop over FBGEMM's packed weights, so write.cpp is hand-written, operation
for operation the Python loop's.

It covers one stream with int8 weights on a CPU, an LSTM of any depth that
folds its input (model.native_weights), and every sampling setting; and the
int8 read of one stream's prompt (`read`, what model.read computes). On x86
CPUs (AVX-512 VNNI, or AVX2) their int8 products of one row go through
write.cpp's q8_linear, FBGEMM's numbers bit for bit at 2-3x its speed (FBGEMM
computes one row as a general matrix product; no library offers the
one-row case with FBGEMM's numerics, which the Python loop must share). Several
streams, beams, other cells and GPUs write through the Python loop, which
stays the reference. Building needs a C++ compiler and takes 10-30 s the
first time, most of it parsing torch's headers (about 10 s on 2 Intel cores,
21 s on 2 AMD Zen 3 cores); it is cached (`torch.utils.cpp_extension`, under
$TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions). Without a compiler
writing stays in Python, said once on stderr.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from .cells import cached
from .config import SampleConfig
from .model import LanguageModel, State

SOURCE = Path(__file__).with_name("write.cpp")
STALE_LOCK = 600  # seconds: a build takes 10-30, so an older lock is a killed build's
# -fopenmp: q8_linear splits rows over torch's own OpenMP threads (the wheel's libgomp.so.1, which the build
# links by that name). Apple's clang has no -fopenmp: on a Mac the product runs on one thread (an Apple Silicon
# Mac has no q8_linear at all). -ffp-contract=off: no multiply-add fused but those written, so its floats are FBGEMM's.
OPENMP = [] if sys.platform == "darwin" else ["-fopenmp"]
FLAGS = ["-O3", *OPENMP, "-ffp-contract=off"]
CHUNK = 64  # tokens a call: streaming stays smooth (about 5 ms of writing), a stop string wastes at most this


class Loop:
    """write.cpp's loop over one model's weights and one stream's settings: `__call__` writes n tokens."""

    def __init__(self, weights: tuple, cfg: SampleConfig, banned):
        self.weights, self.cfg = weights, cfg
        self.banned = torch.tensor(sorted(banned), dtype=torch.long)

    def __call__(self, logits: torch.Tensor, state: State, recent: torch.Tensor, n: int,
                 gen: torch.Generator) -> tuple[list[int], torch.Tensor, State, torch.Tensor]:
        """n ids drawn one after another from logits (1, V) and state (each (L, 1, H)), `recent` (1, <= cfg.lookback)
        the ids the repetition penalty looks back over; the logits, state and recent ids after them."""
        h, c = state
        cfg = self.cfg
        ids, h, c, logits, recent = torch.ops.storyloom.write_tokens(
            *self.weights, h.float(), c.float(), logits.float(), n, self.banned, recent.contiguous(),
            float(cfg.repetition_penalty), cfg.lookback, float(cfg.temperature), cfg.top_k or 0, float(cfg.top_p), gen)
        return ids.tolist(), logits, (h, c), recent


def loop(model: LanguageModel, decode: str, device: torch.device, cfg: SampleConfig, banned, streams: int) -> Loop | None:
    """The native loop for writing `streams` streams with these settings, or None where Python must write."""
    if streams != 1 or decode != "int8" or device.type != "cpu":
        return None
    weights = model.native_weights()
    if weights is None or not build():
        return None
    table, W_hh, W_up, b_up, *head = weights
    return Loop((table, W_hh, W_up, b_up, q8(model, "_q8_write", [W_hh, *W_up]), *head), cfg, banned)


def read(model: LanguageModel, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State] | None:
    """model.read(x, state, "int8") for one stream x (1, T), through write.cpp's read_tokens: the same numbers,
    its recurrent products by q8_linear. None where it does not apply (several streams, a GPU, a cell without
    an int8 read, a CPU without AVX2, no build): model.read reads then."""
    if x.shape[0] != 1 or x.device.type != "cpu" or not build() or not level():
        return None
    weights = model.native_read_weights()
    if weights is None:
        return None
    table, W_ih, W_hh, bounds = weights
    if table is None:  # an input that is no lookup: this prompt's own input products, in order
        table, ids = model.cell.read_inputs(model.inp(x)[0], bounds), torch.arange(x.shape[1])
    else:
        ids = x[0]
    h0, c0 = state if state is not None else model.cell.initial_state(1, x.device)
    h, hn, cn = torch.ops.storyloom.read_tokens(table, ids, W_ih, q8(model, "_q8_read", W_hh), h0.float(),
                                                c0.float())  # (T, H), (L, 1, H) each
    return model.out(h[None]), (hn, cn)


def level() -> int:
    """How write.cpp's q8_linear runs on this CPU: 2 with AVX-512 VNNI (Intel from Cascade Lake, AMD from
    Zen 4), 1 with AVX2 and FMA (x86 from 2013), 0 not at all (the quantized engine's packed products multiply:
    FBGEMM's on x86, QNNPACK's on ARM)."""
    # q8_linear computes FBGEMM's numbers, so it stands in only where the Python loop multiplies with FBGEMM:
    # under QNNPACK (ARM's engine, or asked for by name) the loop's products round otherwise.
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        return 0
    return int(torch.ops.storyloom.q8_level())


def q8(model: LanguageModel, name: str, packed: list) -> list[torch.Tensor]:
    """FBGEMM's packed matrices laid out for write.cpp's q8_linear, 4 tensors each, cached on the model until a
    parameter changes; [] on a CPU without AVX2, where FBGEMM multiplies."""
    if not level():
        return []
    return cached(model, name, lambda: [t for W in packed for t in torch.ops.storyloom.q8_pack(W)])


_built: bool | None = None  # None: not tried yet in this process


def cache_root() -> Path:
    """Where torch.utils.cpp_extension builds by default ($TORCH_EXTENSIONS_DIR, else torch_extensions in the
    user's cache folder), worked out without importing it: that import (setuptools) and its up-to-date check took
    about 90 ms of a cold first character. Where this guesses wrong, build() goes the long way."""
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


def build() -> bool:
    """Compile write.cpp once (or load the build cached on disk); False where it cannot be built."""
    global _built
    if _built is None:
        try:
            compile_cpp(SOURCE, FLAGS, "storyloom_write", "the native writing loop")
            _built = True
        except Exception as e:  # no compiler, no ninja, headers missing: the Python loop writes the same text
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            print(f"storyloom: writing in Python, the native loop did not build ({first[:200]}); "
                  "install a C++ compiler (g++) for about 3x faster writing at batch 1", file=sys.stderr, flush=True)
            _built = False
    return _built
