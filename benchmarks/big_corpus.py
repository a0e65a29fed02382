"""A corpus larger than it is comfortable to hold: prepare speed and training memory.

    python benchmarks/big_corpus.py                  # 1 GB
    python benchmarks/big_corpus.py --gb 0.2 --steps 50
    python benchmarks/big_corpus.py --gb 0.25 --levels word,bpe

1. Writes about `--gb` GB of text into a scratch directory, never into the
   repository: the bundled corpus repeated, each copy perturbed (every work
   turned at a random line, one common word swapped for another per copy),
   grouped four works to a file, as a library of books would come.
2. Runs `storyloom prepare DIR --out PREP` as its own process, once with
   `--workers 1` (the baseline) and once with the default (one worker per
   core): wall-clock seconds of the whole command, start-up included, MB/s
   of input text, and peak RSS of the largest process. Then the same for the
   library concatenated into ONE file (as enwik9 or a joined library comes),
   which prepare reads in pieces; and that file once more through the API
   (`storyloom.prepare`), timed inside its process, so the command's start
   (the interpreter and the package's imports) shows apart.
3. Runs `storyloom train PREP --steps N` and reports its peak RSS, its
   wall-clock time, and its training speed.
4. With `--levels word,bpe`: prepares the one file at those levels, streamed
   (`storyloom prepare --level L`) and, side by side, as it was done before
   prepare streamed them: the whole text in memory (`corpus.build`, the
   reference the streamed ids are tested against), up to `--in-memory-gb`.

The text is fresh in the page cache when prepare reads it (it was just
written), so these figures are for a warm cache; a cold disk adds its read time.
Prints JSON lines; deletes the scratch directory unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from storyloom.sources import bundled_files  # noqa: E402
from machine import describe  # noqa: E402

# The one file prepared by the API in a process of its own, timed inside it: what the command costs without the
# interpreter's start and the package's imports (torch among them, which prepare never uses).
INSIDE = """import sys, time
import storyloom
t = time.perf_counter()
storyloom.prepare([sys.argv[1]], sys.argv[2], progress=False)
print(f"inside_s={time.perf_counter() - t}")
"""

# Word and BPE levels as `storyloom prepare` did them before it streamed: the whole text read, fitted and encoded
# in memory, the ids written out.
IN_MEMORY = """import sys
from storyloom.config import DataConfig
from storyloom.corpus import build
from storyloom.sources import read
c = build(read([sys.argv[1]]), DataConfig(level=sys.argv[2]))
c.train.tofile(sys.argv[3] + ".train.bin"); c.val.tofile(sys.argv[3] + ".val.bin")
print(len(c.train), len(c.val))"""

SWAPS = [(" the ", " a "), (" and ", " or "), (" my ", " thy "), (" you ", " thou "), (" is ", " was "), (" he ", " she ")]


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def generate(out: Path, nbytes: int, seed: int = 0) -> tuple[int, int]:
    """Perturbed copies of the bundled works until nbytes are written; (bytes, files)."""
    rng = random.Random(seed)
    works = [f.read_text() for f in bundled_files("shakespeare")]
    written, files, copy = 0, 0, 0
    while written < nbytes:
        old, new = rng.choice(SWAPS)
        texts = []
        for w in works:
            lines = w.split("\n")
            cut = rng.randrange(len(lines))
            texts.append("\n".join(lines[cut:] + lines[:cut]).replace(old, new))
        rng.shuffle(texts)
        for g in range(0, len(texts), 4):
            data = "".join(texts[g : g + 4]).encode()
            (out / f"book-{copy:04d}-{g // 4:02d}.txt").write_bytes(data)
            written, files = written + len(data), files + 1
            if written >= nbytes:
                break
        copy += 1
    return written, files


def peak_rss_mb(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB of the largest process in cmd's tree, last line of output)."""
    pid = os.fork()
    if pid == 0:  # the child: a fresh rusage account, so the figure is this command's alone
        import resource

        t = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        line = (p.stdout.strip().splitlines() or [""])[-1] if p.returncode == 0 else "FAILED: " + p.stderr[-1500:]
        with open(os.environ["BIG_CORPUS_RESULT"], "w") as f:
            json.dump([wall, peak, line], f)
        os._exit(0)
    os.waitpid(pid, 0)
    with open(os.environ["BIG_CORPUS_RESULT"]) as f:
        wall, peak, line = json.load(f)
    if line.startswith("FAILED"):
        sys.exit(f"{' '.join(cmd)}: {line}")
    return wall, peak, line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0, help="how much text to generate")
    ap.add_argument("--steps", type=int, default=200, help="training steps from the prepared corpus")
    ap.add_argument("--work", help="scratch directory (default: a new one under the system's temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--levels", default="char", help="char (every case above), and/or word, bpe (the one file)")
    ap.add_argument("--in-memory-gb", type=float, default=0.3,
                    help="word/bpe: run the in-memory baseline up to this size (it needs about 15x the text in RAM)")
    a = ap.parse_args()
    levels = a.levels.split(",")
    if not set(levels) <= {"char", "word", "bpe"}:
        sys.exit(f"--levels: choose from char, word, bpe; got {a.levels}")
    work = Path(a.work or tempfile.mkdtemp(prefix="storyloom-big-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["BIG_CORPUS_RESULT"] = str(work / "result.json")
    try:
        src = work / "library"
        src.mkdir(exist_ok=True)
        t = time.perf_counter()
        nbytes, files = generate(src, int(a.gb * 1e9))
        emit(kind="config", gb=a.gb, bytes=nbytes, files=files, generate_s=round(time.perf_counter() - t, 1),
             steps=a.steps, cores=len(os.sched_getaffinity(0)), machine=describe(),
             python=platform.python_version())
        one = work / "one"
        one.mkdir(exist_ok=True)
        with open(one / "library.txt", "wb") as f:  # the same bytes as one file
            for p in sorted(src.iterdir()):
                f.write(p.read_bytes())
        cli = [sys.executable, "-m", "storyloom"]
        for level in (x for x in levels if x != "char"):
            arms = [("streamed", cli + ["prepare", str(one / "library.txt"), "--out", str(work / "prep"), "--level", level])]
            if a.gb <= a.in_memory_gb:
                arms.append(("in memory", [sys.executable, "-c", IN_MEMORY, str(one / "library.txt"), level,
                                           str(work / "whole")]))
            speeds = {}
            for path, cmd in arms:
                shutil.rmtree(work / "prep", ignore_errors=True)
                wall, peak, line = peak_rss_mb(cmd)
                speeds[path] = nbytes / 1e6 / wall
                emit(kind="prepare", level=level, source="one file", path=path, wall_s=round(wall, 2),
                     mb_per_s=round(speeds[path], 1), peak_rss_mb=round(peak), output=line)
            if len(speeds) == 2:
                emit(kind="prepare_ratio", level=level, streamed_over_in_memory=round(speeds["streamed"] / speeds["in memory"], 2))
        if "char" not in levels:
            return
        for source, what in ((src, f"{files} files"), (one / "library.txt", "one file")):
            speeds = {}
            for workers in (1, 0):
                shutil.rmtree(work / "prep", ignore_errors=True)
                wall, peak, line = peak_rss_mb(cli + ["prepare", str(source), "--out", str(work / "prep"), "--workers",
                                                      str(workers)])
                speeds[workers] = nbytes / 1e6 / wall
                emit(kind="prepare", source=what, workers=workers or "one per core", wall_s=round(wall, 2),
                     mb_per_s=round(speeds[workers], 1), peak_rss_mb=round(peak), output=line)
            emit(kind="prepare_ratio", source=what, parallel_over_one_worker=round(speeds[0] / speeds[1], 2))
            if what == "one file":
                shutil.rmtree(work / "prep", ignore_errors=True)
                wall, peak, line = peak_rss_mb([sys.executable, "-c", INSIDE, str(source), str(work / "prep")])
                inside = float(line.split("=")[1])
                emit(kind="prepare", source=what, workers="one per core", path="storyloom.prepare, timed inside Python",
                     wall_s=round(inside, 2), mb_per_s=round(nbytes / 1e6 / inside, 1), start_s=round(wall - inside, 2),
                     peak_rss_mb=round(peak))
        meta = json.loads((work / "prep" / "prepared.json").read_text())
        run = work / "run"
        wall, peak, line = peak_rss_mb(cli + ["train", str(work / "prep"), "--out", str(run), "--steps", str(a.steps),
                                              "--evals", "2", "--overwrite"])
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        speed = sorted(r["chars_per_s"] for r in rows if "chars_per_s" in r)
        emit(kind="train", steps=a.steps, train_tokens=meta["train_tokens"], val_tokens=meta["val_tokens"],
             dtype=meta["dtype"], wall_s=round(wall, 2), peak_rss_mb=round(peak),
             chars_per_s=speed[len(speed) // 2] if speed else None,
             val_bpc=[round(r["val_bpc"], 4) for r in rows if "val_bpc" in r], output=line)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
