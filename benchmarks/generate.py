"""Generation speed of the default preset, side by side with the seeds' method, in one process.

    python benchmarks/generate.py                 # a fresh default-preset run (speed needs no training)
    python benchmarks/generate.py --run RUN       # or a trained run

Measures batch-1 characters per second with carried state; the seeds'
method on the same weights (re-feed the last 40 characters from a fresh
state for every new character); the latency of the first character after a
1,000-character prompt; and characters per second per sample at --num 32.
Prints JSON lines: one `config` line, then one line per measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import storyloom  # noqa: E402
from machine import describe  # noqa: E402


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def timed(fn, repeats: int = 3) -> float:
    """Median seconds of fn() over repeats (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@torch.inference_mode()
def window_refeed(m, prompt: str, n: int, window: int = 40) -> str:
    """The seeds' generation: every new character re-reads the last `window` characters from a zero state."""
    ids = list(m.tokenizer.ids(prompt)[-window:].astype(np.int64))
    out = []
    for _ in range(n):
        x = torch.tensor(ids[-window:])[None]  # (1, window)
        logits, _ = m.model(x)
        nxt = int(logits[0, -1].argmax())
        ids.append(nxt)
        out.append(nxt)
    return m.tokenizer.decode(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a trained run (default: a fresh default-preset run)")
    ap.add_argument("--length", type=int, default=2000)
    a = ap.parse_args()
    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    run = a.run
    if run is None:
        run = storyloom.train(["shakespeare"], out=Path(tempfile.mkdtemp()) / "run", steps=1, evals=1, progress=False)
    m = storyloom.load(run)
    text = storyloom.clean_sources(["shakespeare"])
    prompt40 = text[10000:10040]
    prompt1000 = text[20000:21000]
    emit(kind="config", run=str(run), model=m.config.model.__dict__, torch=torch.__version__, threads=torch.get_num_threads(),
         machine=describe(), length=a.length)

    s = timed(lambda: m.generate(prompt40, a.length, temperature=1.0, seed=0))
    stateful = a.length / s
    emit(kind="batch1", chars_per_s=round(stateful), seconds=round(s, 3), chars=a.length)

    n_win = 200
    s = timed(lambda: window_refeed(m, prompt40, n_win), repeats=1)
    emit(kind="seeds_window_refeed", chars_per_s=round(n_win / s, 1), seconds=round(s, 3), chars=n_win, window=40,
         speedup_of_stateful=round(stateful / (n_win / s), 1))

    def first_char():
        next(iter(m.stream(prompt1000, 10, temperature=1.0, seed=0)))

    s = timed(first_char, repeats=5)
    emit(kind="first_char_latency", prompt_chars=1000, ms=round(1000 * s, 1))

    num, length = 32, 500
    s = timed(lambda: m.samples(prompt40, num=num, length=length, temperature=1.0, seed=0), repeats=1)
    emit(kind="num32", num=num, chars_per_s_per_sample=round(length / s), chars_per_s_total=round(num * length / s),
         seconds=round(s, 3))


if __name__ == "__main__":
    main()
