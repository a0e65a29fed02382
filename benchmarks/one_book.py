"""One book: training from scratch against fine-tuning from the shipped base (`--init shakespeare`), side by side.

    python benchmarks/one_book.py                 # three books of three sizes, 2 and 5 minutes each (about 42 minutes)
    python benchmarks/one_book.py --minutes 2 --books julius_caesar_gut.txt
    python benchmarks/one_book.py --minutes 2 --flags "--beta1 0.9"   # every run with a setting changed
    python benchmarks/one_book.py --minutes 2 --starts init --flags "--seed 2"   # fine-tuning only, another seed
    python benchmarks/one_book.py --plot results/one_book/RESULTS.jsonl   # the curves of a finished run, as a PNG

Books: works of the bundled corpus the base never trained on (the benchmark split's two validation plays), or any
text files given by path; the default three are a play the base never read (116 KB) and two books of the King
James Bible in another style and other sizes (`benchmarks/data/`: Genesis, 205 KB; the New Testament, 990 KB).
Each book is trained on its first 90% and scored on its own last 10% (`--val-fraction 0.1`), for each budget,
from scratch (the default preset, with its small-text defaults) and with `--init shakespeare` (its default
learning rate). Figures: the best val bpc of each run, and the difference scratch - init. Prints JSON lines: a
config line (with the machine), one line per run (with its validation curve), one per book and budget with the gain.
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
from storyloom.sources import bundled_files  # noqa: E402

BOOKS = ("julius_caesar_gut.txt", "benchmarks/data/kjv_genesis.txt", "benchmarks/data/kjv_new_testament.txt")


def book_path(name: str) -> Path:
    for p in (Path(name), ROOT / name):
        if p.exists():
            return p
    return next(f for f in bundled_files("shakespeare") if f.name == name)


def plot(results: Path) -> Path:
    """One panel per book: validation bpc against minutes, from scratch and fine-tuned, each budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in map(json.loads, results.read_text().splitlines()) if "curve" in r]
    books = list(dict.fromkeys(r["book"] for r in runs))
    fig, axes = plt.subplots(1, len(books), figsize=(4.2 * len(books), 3.8), dpi=110, squeeze=False)
    for ax, book in zip(axes[0], books):
        for r in (r for r in runs if r["book"] == book):
            xs, ys = zip(*r["curve"])
            ax.plot([x / 60 for x in xs], ys, marker="o", ms=2.5, color="tab:blue" if r["start"] == "init" else "tab:red",
                    ls="-" if r["minutes"] == max(q["minutes"] for q in runs) else "--",
                    label=f"{r['start']}, {r['minutes']:g} min ({r['best_val_bpc']:.3f})")
        ax.set_title(book, fontsize=9)
        ax.set_xlabel("wall-clock minutes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("validation bpc (the book's last 10%)")
    out = results.with_suffix(".png")
    fig.tight_layout()
    fig.savefig(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--books", default=",".join(BOOKS), help="comma-separated bundled names or paths")
    ap.add_argument("--minutes", default="2,5", help="comma-separated budgets")
    ap.add_argument("--flags", default="", help='more `storyloom train` flags for every run, as one string ("--beta1 0.9")')
    ap.add_argument("--starts", default="scratch,init", help="which starts to run: scratch, init or both (the gain needs both)")
    ap.add_argument("--plot", type=Path, help="draw the curves of a results file (JSON lines this script printed) and exit")
    a = ap.parse_args()
    if a.plot:
        print(plot(a.plot))
        return
    books, budgets = [book_path(b) for b in a.books.split(",")], [float(m) for m in a.minutes.split(",")]
    starts = a.starts.split(",")
    if set(starts) - {"scratch", "init"}:  # "" splits to [""], refused here too
        ap.error(f"--starts {a.starts!r}: name scratch, init or both, comma-separated")
    print(json.dumps({"config": {"books": [f"{b.name} ({b.stat().st_size:,} bytes)" for b in books], "minutes": budgets,
                                 "base": "shakespeare (shipped)", "val": "--val-fraction 0.1", "flags": a.flags,
                                 "starts": starts}, "machine": describe()}), flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        for b in books:
            for minutes in budgets:
                best = {}
                for start in starts:
                    out = Path(tmp) / f"{b.stem}-{minutes}-{start}"
                    cmd = [sys.executable, "-m", "storyloom", "train", str(b), "--val-fraction", "0.1", "--minutes", str(minutes),
                           "--out", str(out), "--no-progress", *a.flags.split()] + (["--init", "shakespeare"] if start == "init" else [])
                    subprocess.run(cmd, check=True, env=env, capture_output=True)
                    rows = storyloom.metrics(out)
                    vals = [r["val_bpc"] for r in rows if "val_bpc" in r]
                    best[start] = min(vals)
                    cfg, st = json.loads((out / "config.json").read_text()), storyloom.status(out)
                    print(json.dumps({"book": b.name, "minutes": minutes, "start": start, "best_val_bpc": round(best[start], 4),
                                      "last_train_bpc": round([r["train_bpc"] for r in rows if "train_bpc" in r][-1], 4),
                                      "stopped": st["stopped"], "elapsed_min": round(st["elapsed"] / 60, 2),
                                      "dropout": cfg["model"]["dropout"], "lr": cfg["train"]["lr"],
                                      "curve": [[r["elapsed_s"], round(r["val_bpc"], 4)] for r in rows if "val_bpc" in r]}),
                          flush=True)
                if len(best) == 2:
                    print(json.dumps({"book": b.name, "minutes": minutes,
                                      "gain_init_over_scratch": round(best["scratch"] - best["init"], 4)}), flush=True)


if __name__ == "__main__":
    main()
