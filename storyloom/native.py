"""The writing loop for one stream in C++ (write.cpp), compiled once, used where it writes what Python would.

Writing at batch 1 is a dozen small tensor operations a character, and in
Python the calls between them took most of the time: the same loop in C++
wrote 8,145-8,605 characters a second where the Python loop wrote 3,180-3,211
(2 Intel cores), the same text for the same seed (benchmarks/README.md, "Batch-1 writing"). No
library offers a sampling loop over FBGEMM's packed weights, so write.cpp
is hand-written, operation for operation the Python loop's.

It covers what most writing asks for: one stream, int8 weights on a CPU, a
one-layer cell that folds its input (model.native_weights), temperature and
banned tokens. Anything else (a repetition penalty, top-k, top-p, beams,
batches) writes through the Python loop, which stays the reference.
Building needs a C++ compiler and takes about 10 s the first time
(`torch.utils.cpp_extension`, cached under $TORCH_EXTENSIONS_DIR or
~/.cache/torch_extensions);
without a compiler writing stays in Python, said once on stderr.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import torch

from .config import SampleConfig
from .model import LanguageModel, State

SOURCE = Path(__file__).with_name("write.cpp")
CHUNK = 64  # tokens a call: streaming stays smooth (about 5 ms of writing), a stop string wastes at most this


class Loop:
    """write.cpp's loop over one model's weights: `__call__` writes n tokens from a state."""

    def __init__(self, weights: tuple, banned, temperature: float):
        self.weights, self.temperature = weights, float(temperature)
        self.banned = torch.tensor(sorted(banned), dtype=torch.long)

    def __call__(self, logits: torch.Tensor, state: State, n: int, gen: torch.Generator) -> tuple[list[int], torch.Tensor, State]:
        """n ids drawn one after another from logits (1, V) and state (each (1, 1, H)); the logits and state after them."""
        h, c = state
        ids, h, c, logits = torch.ops.storyloom.write_tokens(*self.weights, h[0].float(), c[0].float(), logits.float(), n,
                                                               self.temperature, self.banned, gen)
        return ids.tolist(), logits, (h[None], c[None])


def loop(model: LanguageModel, decode: str, device: torch.device, cfg: SampleConfig, banned, streams: int) -> Loop | None:
    """The native loop for writing `streams` streams with these settings, or None where Python must write."""
    if streams != 1 or decode != "int8" or device.type != "cpu" or cfg.repetition_penalty != 1.0 or cfg.top_k is not None \
            or cfg.top_p < 1.0:
        return None
    weights = model.native_weights()
    if weights is None or not build():
        return None
    return Loop(weights, banned, cfg.temperature)


_built: bool | None = None  # None: not tried yet in this process


def build() -> bool:
    """Compile write.cpp once (or load the build cached on disk); False where it cannot be built."""
    global _built
    if _built is None:
        from torch.utils import cpp_extension  # imported on first use: it pulls in setuptools

        # A build per source, torch and Python: each links against its own headers and libraries.
        key = hashlib.sha256(f"{SOURCE.read_text()}{torch.__version__}{sys.version}".encode()).hexdigest()[:12]
        name = f"storyloom_write_{key}"
        where = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()) / name
        if not (where / f"{name}.so").exists():
            print("storyloom: building the native writing loop (once; about 10 s)", file=sys.stderr, flush=True)
        bindir = str(Path(sys.executable).parent)  # pip's ninja, which torch's builder runs by name, lives here
        if shutil.which("ninja") is None and shutil.which("ninja", path=bindir):
            os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        try:
            where.mkdir(parents=True, exist_ok=True)
            cpp_extension.load(name, [str(SOURCE)], extra_cflags=["-O3"], build_directory=str(where),
                               is_python_module=False, verbose=False)
            _built = True
        except Exception as e:  # no compiler, no ninja, headers missing: the Python loop writes the same text
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            print(f"storyloom: writing in Python, the native loop did not build ({first[:200]}); "
                  "install a C++ compiler (g++) for about 3x faster writing at batch 1", file=sys.stderr, flush=True)
            _built = False
    return _built
