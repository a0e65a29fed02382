"""Training inside a cgroup CPU limit (a container's `--cpus`, a Kubernetes pod's CPU limit): the threads storyloom
picks there against one per core, as torch counts them, side by side.

    sudo python benchmarks/quota.py                               # limits of 0.5, 1, 1.25 and 1.5 CPUs, 3 rounds
    sudo python benchmarks/quota.py --limits 1,2 --rounds 4 --steps 300

A limit leaves every CPU in the affinity mask, which is what torch and Python count, while the kernel runs the
process's threads only for `limit` CPUs' worth of each 100 ms period. For each limit the script makes a cgroup of
its own (v1's cpu controller, or v2's; it needs root), and trains the preset on the bundled corpus in fresh
processes inside it, alternating the two arms each round: `storyloom` (no `--threads`: what `cpu.physical_cores`
allows under the limit) and `every core` (`--threads` the cores, what storyloom did before it read the limit).
A run times `--steps` steps after `--skip` and reports the mean ms a step: a throttled period stalls the steps it
falls on, so the mean, not the median, is what the run pays. Prints JSON lines: a config line with the machine, a
line per run, and per limit each arm's median over the rounds, the threads each used, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from machine import describe  # noqa: E402

from storyloom.cpu import cores  # noqa: E402

PERIOD = 100_000  # µs: the kernel's default period for both cgroup versions

RUN = """
import json, statistics, sys, tempfile, time
from pathlib import Path
import torch
import storyloom
skip, steps, threads, preset = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
marks = []
storyloom.train(["shakespeare"], out=Path(tempfile.mkdtemp()) / "run", preset=preset, steps=skip + steps + 1,
                evals=1, patience=0, threads=threads, progress=False,
                on_step=lambda trainer: marks.append(time.perf_counter()))
gaps = [b - a for a, b in zip(marks[skip:], marks[skip + 1:])]
print(json.dumps({"mean_ms": round(statistics.fmean(gaps) * 1e3, 3),
                  "median_ms": round(statistics.median(gaps) * 1e3, 3), "threads": torch.get_num_threads()}))
"""


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def make_cgroup(limit: float) -> Path:
    """A cgroup of this script's own holding `limit` CPUs, for cgroup v1's cpu hierarchy or v2's."""
    v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
    name = f"storyloom-quota-{os.getpid()}-{limit:g}"
    quota = int(limit * PERIOD)
    try:
        if (v1 / "cpu.cfs_quota_us").exists():
            d = v1 / name
            d.mkdir(exist_ok=True)
            (d / "cpu.cfs_period_us").write_text(str(PERIOD))
            (d / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (v2 / "cgroup.subtree_control").write_text("+cpu")
            d = v2 / name
            d.mkdir(exist_ok=True)
            (d / "cpu.max").write_text(f"{quota} {PERIOD}")
    except OSError as e:
        sys.exit(f"quota.py: cannot make a cgroup with a CPU limit here ({e}); it needs root and the cpu controller")
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limits", default="0.5,1,1.25,1.5", help="CPU limits, comma-separated")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each arm per limit, alternated")
    ap.add_argument("--steps", type=int, default=150, help="timed steps a run")
    ap.add_argument("--skip", type=int, default=30, help="steps a run takes before its timed ones")
    ap.add_argument("--preset", default="default")
    a = ap.parse_args()
    every = len(cores())
    limits = [float(x) for x in a.limits.split(",")]
    emit(kind="config", limits=limits, rounds=a.rounds, steps=a.steps, skip=a.skip, preset=a.preset,
         every_core_threads=every, period_us=PERIOD, machine=describe())
    arms = {"storyloom": 0, "every core": every}
    for limit in limits:
        group = make_cgroup(limit)
        ms: dict[str, list[float]] = {arm: [] for arm in arms}
        used: dict[str, int] = {}
        try:
            for r in range(a.rounds):
                for arm in list(arms) if r % 2 == 0 else list(arms)[::-1]:
                    out = subprocess.run(
                        [sys.executable, "-c", RUN, str(a.skip), str(a.steps), str(arms[arm]), a.preset],
                        capture_output=True, text=True,
                        preexec_fn=lambda: (group / "cgroup.procs").write_text(str(os.getpid())))
                    if out.returncode:
                        sys.exit(f"quota.py: the run ({arm}, limit {limit:g}) failed:\n{out.stderr[-2000:]}")
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                    ms[arm].append(row["mean_ms"])
                    used[arm] = row["threads"]
                    emit(kind="run", limit=limit, round=r, arm=arm, **row)
        finally:
            group.rmdir()
        med = {arm: round(statistics.median(v), 3) for arm, v in ms.items()}
        emit(kind="summary", limit=limit, threads=used, mean_ms=med,
             storyloom_speedup=round(med["every core"] / med["storyloom"], 3),
             storyloom_faster_rounds=sum(s < e for s, e in zip(ms["storyloom"], ms["every core"])), rounds=a.rounds)


if __name__ == "__main__":
    main()
