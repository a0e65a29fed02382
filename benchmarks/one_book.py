"""One book: training from scratch against fine-tuning from the shipped base (`--init shakespeare`), side by side.

    python benchmarks/one_book.py                          # the two held-out plays, 2 and 5 minutes each
    python benchmarks/one_book.py --minutes 2 --books julius_caesar_gut.txt

Books: works of the bundled corpus the base never trained on (the benchmark split's two validation plays), or any
text files given by path. Each book is trained on its first 90% and scored on its own last 10% (`--val-fraction
0.1`), for each budget, from scratch (the default preset) and with `--init shakespeare` (its default learning
rate). Figures: the best val bpc of each run, and the difference scratch - init. Prints JSON lines: a config line
(with the machine), one line per run, one per book and budget with the gain.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import describe  # noqa: E402

import storyloom  # noqa: E402
from storyloom.sources import BUNDLED, bundled_files  # noqa: E402


def book_path(name: str) -> Path:
    p = Path(name)
    if p.exists():
        return p
    return next(f for f in bundled_files("shakespeare") if f.name == name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--books", default=",".join(BUNDLED["shakespeare"]), help="comma-separated bundled names or paths")
    ap.add_argument("--minutes", default="2,5", help="comma-separated budgets")
    a = ap.parse_args()
    books, budgets = [book_path(b) for b in a.books.split(",")], [float(m) for m in a.minutes.split(",")]
    print(json.dumps({"config": {"books": [f"{b.name} ({b.stat().st_size:,} bytes)" for b in books], "minutes": budgets,
                                 "base": "shakespeare (shipped)", "val": "--val-fraction 0.1"}, "machine": describe()}), flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        for b in books:
            for minutes in budgets:
                best = {}
                for start in ("scratch", "init"):
                    out = Path(tmp) / f"{b.stem}-{minutes}-{start}"
                    cmd = [sys.executable, "-m", "storyloom", "train", str(b), "--val-fraction", "0.1", "--minutes", str(minutes),
                           "--out", str(out), "--no-progress"] + (["--init", "shakespeare"] if start == "init" else [])
                    subprocess.run(cmd, check=True, env=env, capture_output=True)
                    rows = storyloom.metrics(out)
                    vals = [r["val_bpc"] for r in rows if "val_bpc" in r]
                    best[start] = min(vals)
                    print(json.dumps({"book": b.name, "minutes": minutes, "start": start, "best_val_bpc": round(best[start], 4),
                                      "last_train_bpc": round([r["train_bpc"] for r in rows if "train_bpc" in r][-1], 4),
                                      "stopped": storyloom.status(out)["stopped"],
                                      "elapsed_min": round(storyloom.status(out)["elapsed"] / 60, 2)}), flush=True)
                print(json.dumps({"book": b.name, "minutes": minutes, "gain_init_over_scratch": round(best["scratch"] - best["init"], 4)}),
                      flush=True)


if __name__ == "__main__":
    main()
