"""Dynamic evaluation (issue 17): static against dynamic bpc on a run's validation text, per setting.

    python benchmarks/dynamic_eval.py RUN                      # the whole validation text, the default settings
    python benchmarks/dynamic_eval.py RUN --chars 60000 --settings 64:0.1:0,64:0.1:0.01,64:0.3:0.01

Each setting is segment:lr:decay (train.adapt: score each segment, then one SGD step on it, pulled back toward
the trained weights by decay). Prints JSON lines: a config line (with the machine), then one line per setting
with the static and dynamic bpc of the same text, their difference, and the seconds it took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import describe  # noqa: E402

import storyloom  # noqa: E402
from storyloom.config import AdaptConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--chars", type=int, default=0, help="score the first this many validation characters (0: all)")
    ap.add_argument("--settings", default="64:0.1:0", help="comma-separated segment:lr:decay")
    a = ap.parse_args()
    m = storyloom.load(a.run)
    text = storyloom.api.validation_text(a.run)
    text = text[: a.chars] if a.chars else text
    info = m.info()
    print(json.dumps({"config": {"run": a.run, "preset": info["preset"], "best_val_bpc": info["best_val_bpc"],
                                 "trained_minutes": round((info["training"]["elapsed"] or 0) / 60, 1), "chars": len(text),
                                 "settings": a.settings}, "machine": describe()}), flush=True)
    for spec in a.settings.split(","):
        seg, lr, decay = spec.split(":")
        cfg = AdaptConfig(segment=int(seg), adapt_lr=float(lr), adapt_decay=float(decay))
        t = time.perf_counter()
        r = m.score(text, dynamic=True, adapting=cfg)
        print(json.dumps({"chars": r["chars"], "static_bpc": round(r["bpc"], 4), "dynamic_bpc": round(r["dynamic"]["bpc"], 4),
                          "gain": round(r["bpc"] - r["dynamic"]["bpc"], 4), "segment": cfg.segment, "lr": cfg.adapt_lr,
                          "decay": cfg.adapt_decay, "seconds": round(time.perf_counter() - t, 1)}), flush=True)


if __name__ == "__main__":
    main()
