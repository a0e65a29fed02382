"""Generation speed of the default preset, side by side with the seeds' method, in one process.

    python benchmarks/generate.py                 # the shipped base (the default preset, trained), every decode precision
    python benchmarks/generate.py --run RUN --decode fp32,int8 --bpc

Measures, for each `--decode-precision` (arms alternated, the median of 3;
with int8, also int8 written by the Python loop instead of native.py's, and
by native.py's loop with FBGEMM's products instead of q8_linear's,
`int8-fbgemm`, the prompt read by torch.quantized_lstm; and the one-row
product alone, FBGEMM's against q8_linear's on each path the CPU has):
batch-1 characters per second with carried state; the latency of the first
character after a 1,000-character prompt; characters per second per sample
at --num 32; with --bpc, the bits per character of the benchmark validation
split read as one stream through that precision's step (fp32: through
forward, exact), and read as prompts are read (model.read in the decoder's
read precision: int8 for int8 writing) in pieces of 1,000 characters. Once:
the seeds' method on the same weights (re-feed the last 40 characters from
a fresh state for every new character).
Prints JSON lines: one `config` line, then one line per measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import storyloom  # noqa: E402
from machine import describe  # noqa: E402
from storyloom import native  # noqa: E402
from storyloom.runs import BASES  # noqa: E402
from storyloom.sources import BUNDLED, bundled_files  # noqa: E402


q8_level = native.level


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


@torch.inference_mode()
def read_bpc(w, text: str, piece: int = 1000) -> float:
    """bpc of a character-level run's text read as prompts are read (the decoder's read precision), in pieces of
    `piece` characters with carried state: the figure of the path that reads a prompt before writing."""
    ids = torch.as_tensor(w.tokenizer.ids(text).astype(np.int64))[None]  # (1, N)
    state, nats = None, 0.0
    for s in range(0, ids.shape[1] - 1, piece):
        x, y = ids[:, s : s + piece], ids[:, s + 1 : s + piece + 1]
        logits, state = w.model.read(x[:, : y.shape[1]], state, w.decoder.precision)
        nats += torch.nn.functional.cross_entropy(logits[0].float(), y[0], reduction="sum").item()
    return nats / (ids.shape[1] - 1) / np.log(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a trained run (default: the shipped base, storyloom/bases/shakespeare)")
    ap.add_argument("--length", type=int, default=2000)
    ap.add_argument("--decode", default="fp32,bf16,int8", help="comma-separated decode precisions to compare")
    ap.add_argument("--bpc", action="store_true", help="also score the benchmark validation split through each")
    a = ap.parse_args()
    run = a.run or str(BASES / "shakespeare")
    decodes = a.decode.split(",")
    writers = {d: storyloom.load(run, decode_precision=d) for d in decodes}
    if "int8" in writers:  # the same int8 step written by the Python loop, beside native.py's C++ loop
        writers["int8-python"] = storyloom.load(run, decode_precision="int8")
        writers["int8-python"].decoder.native = False
        if native.build() and native.level():  # and the C++ loop with FBGEMM's products instead of q8_linear's
            writers["int8-fbgemm"] = storyloom.load(run, decode_precision="int8")
    m = writers[decodes[0]]
    text = storyloom.clean_sources(["shakespeare"])
    prompt40 = text[10000:10040]
    prompt1000 = text[20000:21000]
    emit(kind="config", run=str(run), model=m.config.model.__dict__, torch=torch.__version__, threads=torch.get_num_threads(),
         machine=describe(), length=a.length, decodes=decodes)

    rows: dict[tuple[str, str], list[float]] = {}
    for _ in range(3):  # arms alternated: a shared machine drifts
        for d, w in writers.items():
            native.level = (lambda: 0) if d == "int8-fbgemm" else q8_level
            s = timed(lambda: w.generate(prompt40, a.length, temperature=1.0, seed=0), repeats=1)
            rows.setdefault((d, "batch1"), []).append(a.length / s)
            s = timed(lambda: next(iter(w.stream(prompt1000, 10, temperature=1.0, seed=0))), repeats=3)
            rows.setdefault((d, "first_char_ms"), []).append(1000 * s)
            num, length = 32, 500
            s = timed(lambda: w.samples(prompt40, num=num, length=length, temperature=1.0, seed=0), repeats=1)
            rows.setdefault((d, "num32_total"), []).append(num * length / s)
    native.level = q8_level
    base = statistics.median(rows[(decodes[0], "batch1")])
    for d in writers:
        med = {k: statistics.median(rows[(d, k)]) for k in ("batch1", "first_char_ms", "num32_total")}
        emit(kind="decode", decode=d, chars_per_s=round(med["batch1"]), ratio_to_first=round(med["batch1"] / base, 3),
             first_char_ms=round(med["first_char_ms"], 1), num32_chars_per_s_total=round(med["num32_total"]),
             runs=[round(x) for x in rows[(d, "batch1")]])

    if native.build() and native.level():  # the one-row int8 product alone, at the default preset's shapes, each path
        from storyloom.cells import int8_packed
        for N, K in ((3072, 768), (3072, 896)):
            packed = int8_packed(torch.randn(N, K) * 0.05)
            q, x = torch.ops.storyloom.q8_pack(packed), torch.tanh(torch.randn(1, K))
            us = {}
            for _ in range(3):  # alternated
                arms = [("fbgemm", lambda: torch.ops.quantized.linear_dynamic(x, packed, True))]
                arms += [(f"q8_linear level {v}", lambda v=v: torch.ops.storyloom.q8_linear(x, q, v))
                         for v in range(q8_level(), 0, -1)]
                for arm, f in arms:
                    us.setdefault(arm, []).append(1e6 * timed(lambda: [f() for _ in range(1000)], repeats=3) / 1000)
            med = {k: statistics.median(v) for k, v in us.items()}
            emit(kind="product", shape=[1, K, N], us={k: round(v, 1) for k, v in med.items()},
                 speedup={k: round(med["fbgemm"] / v, 2) for k, v in med.items() if k != "fbgemm"})

    n_win = 200
    s = timed(lambda: window_refeed(m, prompt40, n_win), repeats=1)
    emit(kind="seeds_window_refeed", chars_per_s=round(n_win / s, 1), seconds=round(s, 3), chars=n_win, window=40,
         speedup_of_stateful=round(base / (n_win / s), 1))

    if a.bpc:
        val = storyloom.clean_sources([str(f) for f in bundled_files("shakespeare") if f.name in BUNDLED["shakespeare"]])
        for d in decodes:  # int8-python scores as int8 does
            w, t = writers[d], time.perf_counter()
            r = w.score(val)
            emit(kind="bpc", decode=d, bpc=round(r["bpc"], 4), through=r.get("decode_precision", "forward (exact)"),
                 chars=r["chars"], seconds=round(time.perf_counter() - t, 1))
            t = time.perf_counter()
            emit(kind="read_bpc", decode=d, read=w.decoder.precision, bpc=round(read_bpc(w, val), 4),
                 seconds=round(time.perf_counter() - t, 1))


if __name__ == "__main__":
    main()
