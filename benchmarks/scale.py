"""Data-parallel training speed: characters learned per second for world sizes side by side, in one run.

    python benchmarks/scale.py                                   # worlds 1 and 2 on this CPU, 60 s each
    python benchmarks/scale.py --worlds 1,2,4,8 --seconds 40      # a bigger CPU
    python benchmarks/scale.py --device cuda --worlds 1 --torchrun-one   # one GPU: DDP's own cost at world 1

World 1 is a plain `storyloom train` process; world N > 1 is `torchrun
--nproc-per-node N -m storyloom train` (gloo on the CPU, nccl on GPUs), with
the CPU threads split evenly between the ranks (`--threads cores/N`), the
same global batch (`--batch-size`, default the preset's; with `--weak`, that
batch per rank, so the global batch is N times it) and the same
prepared corpus, memory-mapped by every rank: the bundled corpus on its
fixed benchmark split, prepared once before the first launch. `--torchrun-one`
adds a torchrun world of 1 (a process group and DDP around one process).

Figures are from the run's own metrics rows: chars_per_s is the global
batch's characters over the seconds spent in steps (rank 0's clock),
median over the rows after the first two (warm-up); evaluations are off the
clock. Prints JSON lines: a config line (with the machine), one line per
world, and each world's ratio to world 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import describe  # noqa: E402
from storyloom import presets  # noqa: E402
from storyloom.cpu import physical_cores  # noqa: E402


def launch(world: int, torchrun: bool, prepared: Path, out: Path, a, threads: int, batch: int) -> dict:
    train = ["train", str(prepared), "--out", str(out), "--preset", a.preset, "--minutes", str(a.seconds / 60),
             "--threads", str(threads), "--device", a.device, "--evals", "1", "--log-every", str(a.log_every), "--no-progress"]
    if batch:
        train += ["--batch-size", str(batch)]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world), "-m", "storyloom",
               *train]
    else:
        cmd = [sys.executable, "-m", "storyloom", *train]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=a.seconds * 4 + 300)
    wall = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"world {world} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "chars_per_s" in r]
    speeds = [r["chars_per_s"] for r in steps[2:]] or [r["chars_per_s"] for r in steps]
    return {"world": world, "launcher": "torchrun" if torchrun else "plain", "threads_per_rank": threads, "batch": batch or "preset",
            "chars_per_s": round(statistics.median(speeds), 1), "rows": len(speeds), "steps": steps[-1]["step"],
            "train_bpc_last": round(steps[-1]["train_bpc"], 4), "val_bpc": round(rows[-1].get("val_bpc", float("nan")), 4),
            "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", default="1,2", help="comma-separated world sizes (1: a plain process)")
    ap.add_argument("--seconds", type=float, default=60.0, help="training time per world")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--batch-size", type=int, default=0, help="the global batch (default: the preset's)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--cores", type=int, default=0, help="CPU threads in all, split between the ranks (default: physical cores)")
    ap.add_argument("--torchrun-one", action="store_true", help="also a torchrun world of 1 (DDP around one process)")
    ap.add_argument("--weak", action="store_true", help="--batch-size (or the preset's) per rank: the global batch grows with the world")
    ap.add_argument("--log-every", type=int, default=10)
    a = ap.parse_args()
    worlds = [int(w) for w in a.worlds.split(",")]
    preset_batch = presets.build(a.preset, {}).train.batch_size
    cores = a.cores or physical_cores()
    print(json.dumps({"config": {"worlds": worlds, "seconds": a.seconds, "preset": a.preset, "batch_size": a.batch_size or "preset",
                                 "device": a.device, "cores": cores, "weak": a.weak, "corpus": "bundled shakespeare, benchmark split, prepared"},
                      "machine": describe()}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared"
        subprocess.run([sys.executable, "-m", "storyloom", "prepare", "shakespeare", "--out", str(prepared)],
                       check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
        plan = [(w, w > 1) for w in worlds] + ([(1, True)] if a.torchrun_one else [])
        results = []
        for w, torchrun in plan:
            threads = max(1, cores // w)
            batch = (a.batch_size or preset_batch) * w if a.weak else a.batch_size
            r = launch(w, torchrun, prepared, Path(tmp) / f"w{w}-{int(torchrun)}", a, threads, batch)
            results.append(r)
            print(json.dumps(r), flush=True)
    base = next((r for r in results if r["world"] == 1 and r["launcher"] == "plain"), None)
    if base:
        print(json.dumps({"ratio_to_world_1": {f"{r['world']}-{r['launcher']}": round(r["chars_per_s"] / base["chars_per_s"], 3)
                                               for r in results}}))


if __name__ == "__main__":
    main()
