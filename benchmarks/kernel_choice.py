"""How `--lstm-kernel auto` decides on this machine: its timed trial, repeated, and what each trial costs.

    python benchmarks/kernel_choice.py                        # the default preset, bf16 (where it runs) and fp32
    python benchmarks/kernel_choice.py --trials 10 --precisions fp32 --preset mysterious-island
    python benchmarks/kernel_choice.py --neighbour alternate     # every other trial beside one busy process

auto times one training step of each LSTM kernel (torch's fused LSTM, and storyloom's C++ recurrence, "loops")
the first time a model of its shapes trains on a machine, and keeps the faster (storyloom/kernels.py). A choice
taken once must be the right one: this repeats the same trial `--trials` times per precision, never reading or
writing the kept choices, and prints each trial's pick, both kernels' medians and their ratio, and what the trial
cost in wall-clock, and how many cores other processes kept busy meanwhile, as auto reads it (it keeps an answer
only where kernels.quiet says so). `--neighbour`: none, alternate (every other trial beside one busy
process, a plain Python loop, as contention.py starts one) or always. Against it, `roofline.py --lstm-kernels
torch,loops` times whole training runs through each. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from machine import describe  # noqa: E402
from storyloom import kernels, presets, runtime  # noqa: E402
from storyloom.cpu import physical_cores  # noqa: E402
from storyloom.model import LanguageModel  # noqa: E402
from storyloom.train import step_timer  # noqa: E402


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--precisions", default="bf16,fp32", help="comma-separated; bf16 is left out where the CPU has "
                    "no bf16 LSTM kernel")
    ap.add_argument("--trials", type=int, default=6, help="trials per precision")
    ap.add_argument("--neighbour", choices=("none", "alternate", "always"), default="none",
                    help="trials beside one busy process")
    a = ap.parse_args()
    runtime.set_threads(physical_cores())  # as storyloom.train sets them (no --threads)
    runtime.keep_freed_memory()
    cfg = presets.build(a.preset)
    cfg.model.vocab_size = 90  # characters in the bundled corpus's training text, near enough
    B, T = cfg.train.batch_size, cfg.train.seq_len
    torch.manual_seed(0)
    model = LanguageModel(cfg.model)
    emit(kind="config", preset=a.preset, B=B, T=T, trials=a.trials, warmup=kernels.TRIAL_WARMUP, rounds=kernels.TRIAL_ROUNDS,
         threads=torch.get_num_threads(), machine=describe())
    why = kernels.build_lstm()
    if why:
        sys.exit(f"kernel_choice.py: lstm.cpp did not build here ({why}): auto trains with torch's kernel untimed")
    for precision in a.precisions.split(","):
        if precision == "bf16" and not runtime.bf16_lstm_runs(torch.device("cpu")):
            emit(kind="skipped", precision=precision, why="no bf16 LSTM kernel on this CPU: training runs in fp32")
            continue
        picks, ratios = [], []
        for i in range(a.trials):
            shared = a.neighbour == "always" or (a.neighbour == "alternate" and i % 2 == 1)
            neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if shared else None
            try:
                if neighbour is not None:
                    time.sleep(0.5)  # under way before the trial starts
                t = time.perf_counter()
                choice, median, others = kernels.timed_choice(step_timer(model, precision, B, T))
            finally:
                if neighbour is not None:
                    neighbour.kill()
                    neighbour.wait()
            ratio = median["torch"] / median["loops"]
            picks.append(choice)
            ratios.append(ratio)
            emit(kind="trial", precision=precision, trial=i + 1, neighbour=shared, choice=choice,
                 ms_per_step={k: round(v * 1e3, 2) for k, v in median.items()}, loops_speedup=round(ratio, 3),
                 trial_s=round(time.perf_counter() - t, 2), others_busy=None if others is None else round(others, 2),
                 kept=kernels.quiet(others))
        emit(kind="summary", precision=precision, picks={k: picks.count(k) for k in ("torch", "loops")},
             loops_speedup_range=[round(min(ratios), 3), round(max(ratios), 3)])


if __name__ == "__main__":
    main()
