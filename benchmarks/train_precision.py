"""bf16 against fp32 training speed, per machine kind: what `--precision auto` should pick.

    python benchmarks/train_precision.py                              # this machine as it is
    python benchmarks/train_precision.py --caps none,AVX512_CORE_BF16 # and, on an AMX machine, without AMX

For each oneDNN instruction cap (`none`: this CPU as it is; a name such as
AVX512_CORE_BF16: oneDNN, which runs the bf16 matmuls and the LSTM kernel,
limited to it, which is how the same CPU runs without AMX), a fresh process
trains the default preset for `--seconds` in fp32 and in bf16, alternated for
`--rounds` rounds, and reports characters learned per second, the ratio
bf16 / fp32 and what `auto` picks there. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import storyloom  # noqa: E402
from machine import describe, label  # noqa: E402
from storyloom import runtime  # noqa: E402


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def chars_per_s(run: Path) -> float:
    """The median logged rate, the first row (warm-up) left out where there are others."""
    rows = [r["tokens_per_s"] for r in storyloom.metrics(run) if "tokens_per_s" in r]
    rows = sorted(rows[1:] or rows)
    return rows[len(rows) // 2]


def child(seconds: float, rounds: int, preset: str) -> None:
    """Runs in the process whose environment holds the cap."""
    d = describe()
    auto = runtime.resolve_precision("auto", torch.device("cpu"))
    emit(kind="config", preset=preset, seconds=seconds, rounds=rounds, auto=auto, machine=d, label=label(d))
    if not runtime.bf16_lstm_runs(torch.device("cpu")):  # no AVX-512 or AMX: there is no bf16 arm to time
        return emit(kind="summary", label=label(d), onednn_max_isa=d["onednn_max_isa"], bf16="no bf16 LSTM kernel",
                    faster="fp32", auto=auto)
    out = Path(tempfile.mkdtemp(prefix="storyloom-precision-"))
    got: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(rounds):
        for p in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
            run = storyloom.train(["shakespeare"], out=out / f"{p}-{r}", preset=preset, minutes=seconds / 60, evals=1,
                                  patience=0, precision=p, progress=False)
            got[p].append(chars_per_s(run))
            emit(kind="arm", round=r, precision=p, chars_per_s=got[p][-1], label=label(d))
    f, b = sum(got["fp32"]) / rounds, sum(got["bf16"]) / rounds
    emit(kind="summary", label=label(d), onednn_max_isa=d["onednn_max_isa"], fp32_chars_per_s=round(f),
         bf16_chars_per_s=round(b), bf16_over_fp32=round(b / f, 3), faster="bf16" if b > f else "fp32", auto=auto)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caps", default="none", help="oneDNN caps, comma-separated (none: as the CPU is)")
    ap.add_argument("--seconds", type=float, default=30.0, help="training time per arm and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.seconds, a.rounds, a.preset)
    for cap in a.caps.split(","):
        env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
        if cap != "none":
            env["ONEDNN_MAX_CPU_ISA"] = cap
        # oneDNN reads its cap once, when it first runs: each cap needs a process of its own
        subprocess.run([sys.executable, __file__, "--child", "--seconds", str(a.seconds), "--rounds", str(a.rounds),
                        "--preset", a.preset], env=env, check=True)


if __name__ == "__main__":
    main()
