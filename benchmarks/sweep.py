"""Train several configurations for the same wall-clock budget on the benchmark split, one after another.

    python benchmarks/sweep.py --minutes 3 default default:dropout=0 default:hidden=768,layers=1,dropout=0

Each SPEC is a preset name, optionally followed by `:flag=value,...` with the
`storyloom train` flags written with underscores (`default:batch_size=64,seed=1`).
This is how the default preset was chosen (benchmarks/README.md). Prints a
`config` line naming the machine, then one JSON line per SPEC with
the validation bpc at each evaluation, the mean training bpc of the last
five logged intervals, steps and characters per second. With `--rescore`, also
the validation text scored exactly (one stream, fp32, as `storyloom eval`
does) with the run's best weights and with its last checkpoint's: with
`--average` (the default) the first are the weights' moving average and the
second the weights as trained, so one run compares the two.

With `--parallel N`, N specs train at once, each in its own process, and
their lines print as each ends. Only for step-limited specs
(`default:steps=12500,seed=1`): runs at once share the machine, so a time
limit would give each fewer steps. On one GPU, start NVIDIA's MPS first
(`nvidia-cuda-mps-control -d`): the default preset uses a sliver of the
chip, and under MPS 16 such runs trained at once, each at the speed of one
alone (benchmarks/README.md, "AdamW's first beta"). Each process
gets the CPU's threads divided among them unless its spec names `threads`.

With `--pin CORES`, every spec trains at once, each in its own process held
(`sched_setaffinity`) to CORES physical cores of its own with CORES threads,
on the CPU unless its spec names a `device`. Time limits are allowed: no run
takes another's cores. They still share the chip's memory and caches, so
each run's characters a second belong in the reading: on a 16-core AMX
Xeon, eight runs pinned to two cores each trained half as fast as one alone
(benchmarks/README.md, "On AMX, the first beta and the rate side by side").
This is how a many-core host, such as a GPU machine's CPU, measures several
arms of a 2-core budget in one go:

    python benchmarks/sweep.py --pin 2 --minutes 10 --evals 5 default:seed=1 default:seed=2 default:seed=3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import cache
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import storyloom  # noqa: E402
from machine import describe  # noqa: E402
from storyloom.cpu import cores  # noqa: E402
from storyloom.sources import BUNDLED  # noqa: E402


def parse_spec(spec: str) -> tuple[str, dict]:
    preset, _, rest = spec.partition(":")
    flags = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        flags[key] = value
    return preset, flags


@cache  # one cleaning per process, however many runs it re-scores
def val_text() -> str:
    """The benchmark split's validation text, cleaned as training reads it."""
    here = Path(storyloom.__file__).parent / "corpora" / "shakespeare"
    return storyloom.clean_sources([str(here / name) for name in BUNDLED["shakespeare"]])


def one(i: int, spec: str, out: Path, minutes: float, evals: int, rescore: bool, threads: int = 0,
        cpus: frozenset[int] = frozenset()) -> dict:
    """Train one spec and report it; on `cpus` alone, if given."""
    if cpus:  # before torch's first parallel region, whose threads inherit this mask
        os.sched_setaffinity(0, cpus)
    preset, flags = parse_spec(spec)
    if threads:
        flags.setdefault("threads", threads)
    if cpus:  # pinned cores are for training on them, even on a GPU's host
        flags.setdefault("device", "cpu")
    run = storyloom.train(["shakespeare"], out=out / f"{i:02d}-{preset}", preset=preset, minutes=minutes,
                          evals=evals, patience=0, progress=False, **flags)
    rows = storyloom.api.metrics(run)
    train = [r for r in rows if "train_bpc" in r]
    exact = {f"val_bpc_exact_{w}": round(storyloom.load(run, which=w).score(val_text())["bpc"], 4)
             for w in ("best", "last")} if rescore else {}
    return {
        "spec": spec, "minutes": minutes,
        "val_bpc": [round(r["val_bpc"], 4) for r in rows if "val_bpc" in r],
        "val_steps": [r["step"] for r in rows if "val_bpc" in r],
        "train_bpc_last": round(sum(r["train_bpc"] for r in train[-5:]) / len(train[-5:]), 4),
        "steps": rows[-1]["step"],
        "chars_per_s": round(sum(r["chars_per_s"] for r in train) / len(train)),
        **exact,
        **({"cpus": sorted(cpus)} if cpus else {}),
        "run": str(run),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("specs", nargs="+", metavar="SPEC")
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--evals", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--rescore", action="store_true", help="score the best and the last weights exactly after each run")
    ap.add_argument("--parallel", type=int, default=1, metavar="N", help="train N step-limited specs at once")
    ap.add_argument("--pin", type=int, default=0, metavar="CORES",
                    help="train every spec at once, each on CORES physical cores of its own (time limits allowed)")
    a = ap.parse_args()
    if a.parallel > 1 and a.pin:
        ap.error("--parallel and --pin both run specs at once: choose one")
    if a.parallel > 1 and not all(parse_spec(s)[1].get("steps") for s in a.specs):
        ap.error("--parallel needs every spec to stop at a number of steps (steps=N): runs at once share the "
                 "machine, so a time limit would give each fewer steps")
    if a.pin < 0:
        ap.error(f"--pin takes a number of physical cores for each spec (0: off), got {a.pin}")
    if a.pin and not hasattr(os, "sched_setaffinity"):
        ap.error("--pin holds each run to its cores with sched_setaffinity, which this system lacks (Linux has it)")
    groups = cores()
    if a.pin * len(a.specs) > len(groups):
        ap.error(f"--pin {a.pin}: {len(a.specs)} specs need {a.pin * len(a.specs)} physical cores, and this "
                 f"process may use {len(groups)}; pin fewer cores or give fewer specs")
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="storyloom-sweep-"))
    print(json.dumps({"kind": "config", "minutes": a.minutes, "evals": a.evals, "specs": a.specs,
                      "parallel": a.parallel, "pin": a.pin, "machine": describe()}), flush=True)
    if a.parallel <= 1 and not a.pin:
        for i, spec in enumerate(a.specs):
            print(json.dumps(one(i, spec, out, a.minutes, a.evals, a.rescore)), flush=True)
        return
    at_once = len(a.specs) if a.pin else a.parallel
    threads = a.pin or max(1, (os.cpu_count() or 1) // a.parallel)
    cpus = [frozenset().union(*groups[i * a.pin:(i + 1) * a.pin]) for i in range(len(a.specs))]
    # spawn: each run starts its own torch (and CUDA context) rather than a fork of this one
    with ProcessPoolExecutor(at_once, mp_context=get_context("spawn")) as pool:
        runs = [pool.submit(one, i, spec, out, a.minutes, a.evals, a.rescore, threads, cpus[i])
                for i, spec in enumerate(a.specs)]
        for done in as_completed(runs):
            print(json.dumps(done.result()), flush=True)


if __name__ == "__main__":
    main()
