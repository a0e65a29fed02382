"""Where a training step's time goes: kernel, elementwise, optimizer, data, Python.

    python benchmarks/profile_train.py                       # the default preset, bf16
    python benchmarks/profile_train.py --precision fp32 --steps 60
    python benchmarks/profile_train.py --precision fp32 --lstm-kernel loops   # storyloom's C++ recurrence

Trains the preset on the bundled corpus under torch.profiler (CPU
activities) and sorts the self time of every recorded op into:
- kernel: the LSTM kernels (oneDNN's RNN primitive forward and backward) and
  matrix products (the head, its gradients);
- elementwise: every other op (embedding, cross-entropy, casts, gradient
  clipping's norms, the state reset mask, ...);
- optimizer: ops under `Optimizer.step` and `zero_grad`;
- data: ops under the batch cut (`Batches.__getitem__`, wrapped here, not in
  the trainer) and the host-to-device copy;
- Python and framework: the wall time of the profiled steps not inside any op.

The first `--warmup` steps are left out (oneDNN builds its kernels then).
Prints JSON lines: a config line, the breakdown, and the top ops.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import storyloom  # noqa: E402
from machine import describe  # noqa: E402
from storyloom.batches import Batches  # noqa: E402

KERNEL = ("rnn", "lstm", "mm", "matmul", "linear", "addmm", "bmm", "gemm")


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def category(e) -> str:
    node = e
    while node is not None:
        if node.name.startswith("Optimizer.") or "zero_grad" in node.name:
            return "optimizer"
        if node.name == "batches":
            return "data"
        node = node.cpu_parent
    name = e.name.lower()
    if name in ("aten::to", "aten::_to_copy", "aten::copy_") and e.cpu_parent is None:
        return "data"
    return "kernel" if any(k in name for k in KERNEL) else "elementwise"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--lstm-kernel", default="auto", help="torch, loops or auto, as `storyloom train --lstm-kernel`")
    ap.add_argument("--steps", type=int, default=40, help="profiled steps")
    ap.add_argument("--warmup", type=int, default=20, help="steps before profiling starts")
    a = ap.parse_args()

    cut = Batches.__getitem__

    def traced(self, k):
        with record_function("batches"):
            return cut(self, k)

    Batches.__getitem__ = traced
    state = {"n": 0, "prof": None, "t0": 0.0, "t1": 0.0}

    def counted(trainer):
        # Called before each step, its batch already cut: the window runs from
        # step warmup+1 to step warmup+steps+1, `steps` whole iterations of the
        # loop, each with its batch cut. The trainer stays unaware.
        state["n"] += 1
        if state["n"] == a.warmup + 1:
            state["prof"] = profile(activities=[ProfilerActivity.CPU])
            state["prof"].__enter__()
            state["t0"] = time.perf_counter()
        if state["n"] == a.warmup + a.steps + 1:
            state["t1"] = time.perf_counter()
            state["prof"].__exit__(None, None, None)

    out = Path(tempfile.mkdtemp(prefix="storyloom-profile-"))
    storyloom.train(["shakespeare"], out=out / "run", preset=a.preset, steps=a.warmup + a.steps + 1, evals=1, patience=0,
                    precision=a.precision, lstm_kernel=a.lstm_kernel, progress=False, on_step=counted)
    prof, wall = state["prof"], (state["t1"] - state["t0"]) * 1e6  # microseconds
    events = [e for e in prof.events() if e.device_type.name == "CPU"]
    spent: dict[str, float] = defaultdict(float)
    ops: dict[tuple[str, str], float] = defaultdict(float)
    for e in events:
        c = category(e)
        spent[c] += e.self_cpu_time_total
        ops[(c, e.name)] += e.self_cpu_time_total
    spent["python and framework"] = max(wall - sum(spent.values()), 0.0)
    total = sum(spent.values())
    emit(kind="config", preset=a.preset, precision=a.precision, lstm_kernel=a.lstm_kernel, profiled_steps=a.steps, warmup=a.warmup,
         torch=torch.__version__, threads=torch.get_num_threads(), machine=describe())
    emit(kind="breakdown", ms_per_step=round(wall / a.steps / 1e3, 2),
         **{k: round(v / total, 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])})
    for (c, name), us in sorted(ops.items(), key=lambda kv: -kv[1])[:15]:
        emit(kind="op", category=c, op=name, ms_per_step=round(us / a.steps / 1e3, 3), share=round(us / total, 3))


if __name__ == "__main__":
    main()
