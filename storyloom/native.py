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
21 s on 2 AMD Zen 3 cores); it is cached (`kernels.compile_cpp`, under
$TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions). Without a compiler
writing stays in Python, said once on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .cells import cached
from .config import SampleConfig
from .kernels import OPENMP, compile_cpp, first_line, remedy
from .model import LanguageModel, State

SOURCE = Path(__file__).with_name("write.cpp")
# -fopenmp (kernels.OPENMP): q8_linear splits rows over torch's own OpenMP threads; on a Mac it runs on one (an
# Apple Silicon Mac has no q8_linear at all). -ffp-contract=off: no multiply-add fused but those written, so its
# floats are FBGEMM's.
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


def build() -> bool:
    """Compile write.cpp once (or load the build cached on disk); False where it cannot be built."""
    global _built
    if _built is None:
        try:
            compile_cpp(SOURCE, FLAGS, "storyloom_write", "the native writing loop")
            _built = True
        except Exception as e:  # no compiler, no ninja, headers missing: the Python loop writes the same text
            why = first_line(e)[:200]
            print(f"storyloom: writing in Python, the native loop did not build ({why}); {remedy(why)} for about "
                  "3x faster writing at batch 1", file=sys.stderr, flush=True)
            _built = False
    return _built
