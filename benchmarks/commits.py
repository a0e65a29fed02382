"""Two commits' training steps side by side: did a change make training faster on this machine?

    python benchmarks/commits.py HEAD~1 HEAD                      # the default preset, 8 rounds
    python benchmarks/commits.py main my-branch --rounds 12 --lstm-kernel loops --precision fp32

Checks each commit out into a temporary git worktree (the working tree itself is never touched; "." means the
working tree as it is, uncommitted changes included), then trains the preset on the bundled corpus through each
in turn, one fresh process per run, alternating which goes first each round, so a slow spell of a shared machine
falls on both. A run times `--steps` training steps after `--skip` (a process is slower in its first seconds) and
reports the median ms a step. Prints JSON lines: a config line with the machine, a line per run, then the
medians of each commit's runs, their ratio and in how many rounds the second was faster.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from machine import describe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# One run, in the checkout given: sys.path puts its storyloom first. Steps are timed by the trainer's on_step,
# which is called once a step, its batch already cut.
RUN = """
import json, statistics, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import storyloom
skip, steps, kernel, precision, preset = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
marks = []
storyloom.train(["shakespeare"], out=Path(tempfile.mkdtemp()) / "run", preset=preset, steps=skip + steps + 1,
                evals=1, patience=0, lstm_kernel=kernel, precision=precision, progress=False,
                on_step=lambda trainer: marks.append(time.perf_counter()))
gaps = [b - a for a, b in zip(marks[skip:], marks[skip + 1:])]
print(json.dumps({"median_ms": round(statistics.median(gaps) * 1e3, 3),
                  "mean_ms": round(statistics.fmean(gaps) * 1e3, 3)}))
"""


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def checkout(rev: str, where: Path) -> tuple[Path, str]:
    """A worktree of `rev` under `where` (the working tree itself for "."), and the commit it is."""
    if rev == ".":
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return ROOT, head.stdout.strip() + "+working tree"
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True)
    if commit.returncode:
        sys.exit(f"commits.py: {rev!r} is not a commit here ({commit.stderr.strip()})")
    path = where / commit.stdout.strip()
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(path), rev], cwd=ROOT, check=True)
    return path, commit.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="the baseline: a commit, branch or tag, or . for the working tree")
    ap.add_argument("b", help="the change, the same way")
    ap.add_argument("--rounds", type=int, default=8, help="runs of each, alternated")
    ap.add_argument("--steps", type=int, default=300, help="timed steps a run")
    ap.add_argument("--skip", type=int, default=100, help="steps a run takes before its timed ones")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--lstm-kernel", default="auto", help="torch, loops or auto, as `storyloom train --lstm-kernel`")
    ap.add_argument("--precision", default="auto")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="storyloom-commits-")
    try:
        trees = [checkout(rev, Path(tmp)) for rev in (a.a, a.b)]
        emit(kind="config", a=trees[0][1], b=trees[1][1], rounds=a.rounds, steps=a.steps, skip=a.skip,
             preset=a.preset, lstm_kernel=a.lstm_kernel, precision=a.precision, machine=describe())
        times: list[list[float]] = [[], []]
        for r in range(a.rounds):
            for k in (0, 1) if r % 2 == 0 else (1, 0):
                path, commit = trees[k]
                out = subprocess.run([sys.executable, "-c", RUN, str(path), str(a.skip), str(a.steps),
                                      a.lstm_kernel, a.precision, a.preset], capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"commits.py: the run at {commit} failed:\n{out.stderr[-2000:]}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                times[k].append(row["median_ms"])
                emit(kind="run", round=r, commit=commit, **row)
        med = [statistics.median(t) for t in times]
        emit(kind="summary", a=trees[0][1], b=trees[1][1], a_median_ms=med[0], b_median_ms=med[1],
             speedup=round(med[0] / med[1], 3),
             b_faster_rounds=sum(tb < ta for ta, tb in zip(*times)), rounds=a.rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)  # forget the removed ones


if __name__ == "__main__":
    main()
