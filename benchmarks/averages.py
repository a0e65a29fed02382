"""Moving averages of the weights, several at once along one training run: which to evaluate and keep.

    python benchmarks/averages.py --steps 12500 --evals 5                       # the default preset, seed 1
    python benchmarks/averages.py --steps 12500 --evals 5 min_lr_ratio=0.2 lr=0.006

Trains the preset on the benchmark split with `--average 0` (the weights as
trained, which the run itself evaluates), and alongside keeps several moving
averages of the weights, updated after every step: a fixed decay (`0.999`:
the average moves 0.001 of the way each step) or a share of the steps so far
(`f0.1`: the n-th update moves 1 / (1 + 0.1 n) of the way, as `--average
0.1` does). At each of the run's evaluations every average is evaluated the
way the trainer evaluates. The averages do not change training, so one run
compares them all at the cost of their evaluations. Stopping at a number of
steps, not minutes, keeps the machine's fast and slow phases out of the
schedule. Extra `flag=value` arguments are `storyloom train` settings.

Prints JSON lines: a config line, one line per evaluation (the weights as
trained under "as_trained", then each average), and a final summary.
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
from storyloom.train import averaging  # noqa: E402
from sweep import parse_spec  # noqa: E402


def updater(kind: str):
    """An in-place update (averaged, current, n): a share is the trainer's own (`train.averaging`); a fixed decay d
    moves the average 1 - d of the way each step."""
    if kind.startswith("f"):
        return averaging(float(kind[1:]))

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        for a, p in zip(averaged, current):
            a.lerp_(p, 1 - float(kind))

    return update


class Averages:
    """Every kind of average, updated from the trainer's weights before each step (so after the one before)."""

    def __init__(self, kinds: list[str], marks: set[int]):
        self.kinds, self.marks, self.n = kinds, marks, -1
        self.updates = {k: updater(k) for k in kinds}
        self.avg: dict[str, list[torch.Tensor]] = {}
        self.rows: list[dict] = []
        self.trainer = None  # the run's, once it has called

    def update(self, trainer) -> None:
        weights = [p.detach() for p in trainer.model.parameters()]
        self.n += 1
        if self.n == 0:
            self.avg = {k: [w.clone() for w in weights] for k in self.kinds}
        else:
            for k, avg in self.avg.items():
                self.updates[k](avg, weights, torch.tensor(self.n))

    def __call__(self, trainer) -> None:  # on_step: before step s + 1, with the weights after step s
        self.trainer, s = trainer, trainer.pos.step
        if s >= 1:
            self.update(trainer)
        if s in self.marks:
            self.evaluate(trainer)

    def evaluate(self, trainer) -> None:
        model = trainer.model
        live = [p.detach().clone() for p in model.parameters()]
        row = {"kind": "evaluation", "step": trainer.pos.step}
        for k, avg in self.avg.items():
            with torch.no_grad():
                for p, a in zip(model.parameters(), avg):
                    p.copy_(a)
            row[k] = round(trainer.validate(model)["bpc"], 4)
        with torch.no_grad():
            for p, w in zip(model.parameters(), live):
                p.copy_(w)
        self.rows.append(row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("flags", nargs="*", metavar="FLAG=VALUE")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--steps", type=int, default=12500)
    ap.add_argument("--evals", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--averages", default="0.998,0.999,0.9995,f0.05,f0.1,f0.2")
    a = ap.parse_args()
    _, flags = parse_spec(":" + ",".join(a.flags))
    kinds = a.averages.split(",")
    marks = {-(-a.steps * (i + 1) // a.evals) for i in range(a.evals - 1)}  # the trainer's evaluation steps
    print(json.dumps({"kind": "config", "preset": a.preset, "steps": a.steps, "evals": a.evals, "seed": a.seed,
                      "averages": kinds, "flags": flags, "machine": describe()}), flush=True)
    averages = Averages(kinds, marks)
    out = Path(tempfile.mkdtemp(prefix="storyloom-averages-"))
    run = storyloom.train(["shakespeare"], out=out / "run", preset=a.preset, steps=a.steps, evals=a.evals, patience=0,
                          seed=a.seed, average=0, progress=False, on_step=averages, **flags)
    t = averages.trainer  # after its last step, which no on_step follows
    averages.update(t)
    averages.evaluate(t)
    rows = storyloom.api.metrics(run)
    trained = {r["step"]: round(r["val_bpc"], 4) for r in rows if "val_bpc" in r}
    for row in averages.rows:
        print(json.dumps({**row, "as_trained": trained.get(row["step"])}), flush=True)
    train = [r for r in rows if "chars_per_s" in r]
    print(json.dumps({"kind": "final", "steps": t.pos.step, "as_trained": trained[t.pos.step],
                      **{k: averages.rows[-1][k] for k in kinds},
                      "chars_per_s": round(sum(r["chars_per_s"] for r in train) / len(train)), "run": str(run)}), flush=True)


if __name__ == "__main__":
    main()
