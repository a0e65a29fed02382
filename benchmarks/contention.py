"""Sharing the cores: training and evaluation speed alone and beside one busy neighbour, per threading setting.

    python benchmarks/contention.py                    # every setting, alone and shared
    python benchmarks/contention.py --settings default,storyloom --seconds 8

A neighbour is one CPU-bound process (a plain Python loop), started before a
measurement and killed after it, so it never outlives the script. Each
setting runs in a fresh process, because OpenMP reads its environment
(`OMP_WAIT_POLICY`, `GOMP_SPINCOUNT`) once, when torch loads it. Measured:
- train: characters/s of `default`-preset training steps (bf16 where native),
  for `--seconds` after a warm-up, through the LSTM kernel and with the
  allocator setting `storyloom train` uses (`--lstm-kernel auto`,
  `runtime.keep_freed_memory`);
- eval: seconds for an evaluation as training makes one (16 warm-started
  streams, the first 100,000 validation tokens of the bundled corpus);
- score: seconds for `storyloom eval` of 30,000 characters (one stream, fp32).
Prints JSON lines: a config line (with the machine), one line per setting
and condition, then the ratios shared / alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# name -> (environment, threads, pacer): threads 0 is one per physical core; pacer: storyloom's thread fitting on or off
SETTINGS = {
    "default": ({}, 0, False),  # what torch does by itself: spin-waiting threads, one per core
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, 0, False),
    "spin-10k": ({"GOMP_SPINCOUNT": "10000"}, 0, False),
    "spin-100k": ({"GOMP_SPINCOUNT": "100000"}, 0, False),
    "one-thread": ({}, 1, False),
    "storyloom": ({}, 0, True),  # storyloom's default: one per core, fitted to the cores others leave free
}

CHILD = r"""
import json, sys, time
import numpy as np, torch
import storyloom
from storyloom import presets, runtime
from storyloom.prepared import load_prepared
from storyloom.model import LanguageModel
from storyloom.train import Trainer, evaluate, step_timer
from storyloom.kernels import resolve_lstm_kernel
prep, seconds, threads, pacer = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
corpus, _ = load_prepared(prep)
cfg = presets.build("default", {"threads": threads})
cfg.model.vocab_size = len(corpus.tokenizer)
runtime.set_threads(cfg.train.threads)
runtime.keep_freed_memory()  # as storyloom.train sets it
if not pacer:
    runtime.pacer = None
precision = runtime.resolve_precision("auto", torch.device("cpu"))
torch.manual_seed(0)
model = LanguageModel(cfg.model)
B, T = cfg.train.batch_size, cfg.train.seq_len
kernel = resolve_lstm_kernel(cfg.train.lstm_kernel, precision, torch.device("cpu"), model, B, T,  # as storyloom.train picks it
                             step_timer(model, precision, B, T))
t = Trainer(model, corpus, cfg.train, precision=precision, kernel=kernel)
x, y = t.next_batch()
for _ in range(5):
    t.step(x, y, 1e-3)
n, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    t.step(x, y, 1e-3)
    runtime.pace()  # as the trainer does after every step
    n += 1
train = n * x.numel() / (time.perf_counter() - start)
start = time.perf_counter()
evaluate(model, corpus.val[:100_000], precision, streams=16)
ev = time.perf_counter() - start
start = time.perf_counter()
evaluate(model, corpus.val[:30_000], "fp32")  # `storyloom eval`: one stream, exact
score = time.perf_counter() - start
print(json.dumps({"train_chars_per_s": round(train), "eval_s": round(ev, 2), "score_s": round(score, 2),
                  "threads_at_end": torch.get_num_threads(), "lstm_kernel": kernel}))
"""


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def measure(prep: Path, setting: str, shared: bool, seconds: float) -> dict:
    env, threads, pacer = SETTINGS[setting]
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if shared else None
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, str(prep), str(seconds), str(threads), str(int(pacer))], capture_output=True, text=True,
                             timeout=900, env={**os.environ, **env, "PYTHONPATH": str(ROOT)})
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from machine import describe

    import storyloom

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"of {', '.join(SETTINGS)}")
    ap.add_argument("--seconds", type=float, default=10.0, help="timed training per measurement")
    ap.add_argument("--rounds", type=int, default=1, help="alternated rounds; medians are reported")
    a = ap.parse_args()
    names = [s for s in a.settings.split(",") if s]
    for n in names:
        if n not in SETTINGS:
            ap.error(f"unknown setting {n!r}; choose from {', '.join(SETTINGS)}")
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"storyloom-contention-{os.getpid()}"
    storyloom.prepare(["shakespeare"], work / "prep", progress=False)
    emit(kind="config", machine=describe(), seconds=a.seconds, rounds=a.rounds, settings={n: SETTINGS[n] for n in names})
    results: dict[tuple[str, bool], list[dict]] = {}
    for rnd in range(a.rounds):
        for n in names:
            for shared in (False, True):
                t = time.perf_counter()
                r = measure(work / "prep", n, shared, a.seconds)
                results.setdefault((n, shared), []).append(r)
                emit(kind="measure", setting=n, shared=shared, round=rnd + 1, wall_s=round(time.perf_counter() - t, 1), **r)
    med = lambda rows, k: sorted(r[k] for r in rows)[len(rows) // 2]  # noqa: E731
    for n in names:
        alone, shared = results[(n, False)], results[(n, True)]
        emit(kind="ratio", setting=n, train_alone=med(alone, "train_chars_per_s"), train_shared=med(shared, "train_chars_per_s"),
             train_kept=round(med(shared, "train_chars_per_s") / med(alone, "train_chars_per_s"), 3),
             eval_alone_s=med(alone, "eval_s"), eval_shared_s=med(shared, "eval_s"),
             eval_slowdown=round(med(shared, "eval_s") / med(alone, "eval_s"), 2),
             score_alone_s=med(alone, "score_s"), score_shared_s=med(shared, "score_s"),
             score_slowdown=round(med(shared, "score_s") / med(alone, "score_s"), 2))


if __name__ == "__main__":
    main()
