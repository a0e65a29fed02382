"""How close training runs to this machine's arithmetic limit.

    python benchmarks/roofline.py                 # the default preset, 60 s of training per precision
    python benchmarks/roofline.py --seconds 20 --preset mysterious-island
    python benchmarks/roofline.py --lstm-kernels torch,loops   # the trainer through each LSTM kernel

1. The machine: matmul throughput in fp32 and bf16 at the model's own GEMM
   shapes (the input projection over a whole batch, the recurrent matmul of
   one time step and its gradient, the recurrent weight gradient over the
   whole batch, the head, and their backward transposes), each timed alone
   on warm buffers (fp32 through torch's matmul and through oneDNN, the
   faster counting: on AMD CPUs torch's is MKL's AVX2 code), in `--rounds` passes over the list before the trainer
   and as many after it (each GEMM's best counts): a shared machine's GEMM
   rates move from one minute to the next (two runs a minute apart on an AMX
   host: a bf16 mix of 0.65 and 0.86 TFLOP/s; on a Zen 5, 0.646 to 0.808 over
   one session), and a roofline is the best the machine does. Timed on both
   sides of the trainer, a slow phase during the GEMMs alone cannot flatter
   the ratio; the rows name the mix before and after.
2. The trainer: model FLOP/s achieved by `storyloom train` on the bundled
   corpus, counting per character 2*4H*(I+H) per LSTM layer plus 2*H*V for
   the head, times 3 for training (forward, and backward at twice the cost).

The roofline for the model is the time its GEMMs would take at the measured
rates; the ratio is achieved / roofline, in the same run. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import storyloom  # noqa: E402
from machine import describe  # noqa: E402
from storyloom import presets, runtime  # noqa: E402
from storyloom.runs import Run  # noqa: E402


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def gemm_rate(M: int, K: int, N: int, dtype: torch.dtype, seconds: float = 0.5) -> tuple[float, str]:
    """FLOP/s of (M, K) @ (K, N), best of several timed batches, through the faster library here; and which."""
    a, b = torch.randn(M, K, dtype=dtype), torch.randn(K, N, dtype=dtype)
    products = {"torch.mm": lambda: a @ b}
    if dtype == torch.float32 and torch.backends.mkldnn.is_available():
        # torch's fp32 matmul is MKL's, which runs its AVX2 code on AMD CPUs: on a Zen 5, 0.19 TFLOP/s where oneDNN
        # (the library of torch's bf16 matmul and LSTM) reaches 0.44. A roofline is the best the machine does.
        W = b.t().contiguous()
        products["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, W, None, "none", [], None)
    rates = {}
    for lib, product in products.items():
        for _ in range(5):
            product()
        best, reps = 0.0, max(1, int(2e8 / (2 * M * K * N)))
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            for _ in range(reps):
                product()
            best = max(best, 2 * M * K * N * reps / (time.perf_counter() - t))
        rates[lib] = best
    lib = max(rates, key=rates.get)
    return rates[lib], lib


def model_gemms(B: int, T: int, I: int, H: int, V: int, layers: int) -> list[tuple[str, int, int, int, int]]:
    """(name, M, K, N, times per batch) of one training step's matmuls, forward and backward."""
    g = []
    for l in range(layers):
        i = I if l == 0 else H
        g += [(f"l{l} input projection", B * T, i, 4 * H, 1), (f"l{l} input grad", B * T, 4 * H, i, 1),
              (f"l{l} input weight grad", i, B * T, 4 * H, 1),
              (f"l{l} recurrent step", B, H, 4 * H, T), (f"l{l} recurrent grad", B, 4 * H, H, T),
              # the kernel sums the recurrent weight gradient over the whole sequence in one GEMM
              (f"l{l} recurrent weight grad", H, B * T, 4 * H, 1)]
    g += [("head", B * T, H, V, 1), ("head input grad", B * T, V, H, 1), ("head weight grad", H, B * T, V, 1)]
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--seconds", type=float, default=60.0, help="training time per precision")
    ap.add_argument("--rounds", type=int, default=3, help="passes over the GEMM list before training, and again after; each GEMM's best rate counts")
    ap.add_argument("--lstm-kernels", default="auto", help="the trainer once per --lstm-kernel, comma-separated, in "
                    "each precision (torch,loops: torch's fused LSTM against storyloom's C++ recurrence)")
    a = ap.parse_args()
    runtime.keep_freed_memory()  # as training keeps it (api.train), so the GEMMs and the trainer run alike
    if a.rounds < 1:
        ap.error(f"--rounds {a.rounds}: at least one pass over the GEMM list")
    cfg = presets.build(a.preset)
    m, t = cfg.model, cfg.train
    V = 90  # characters in the bundled corpus's training text, near enough for the head's share
    I = m.embed if m.input == "embedding" else (V if m.input == "onehot" else 1)
    B, T, H, L = t.batch_size, t.seq_len, m.hidden, m.layers
    emit(kind="config", preset=a.preset, B=B, T=T, I=I, H=H, layers=L, V=V, seconds=a.seconds, rounds=a.rounds,
         torch=torch.__version__, threads=torch.get_num_threads(), machine=describe())
    flops_per_char = 3 * (sum(2 * 4 * H * ((I if l == 0 else H) + H) for l in range(L)) + 2 * H * V)
    gemms = model_gemms(B, T, I, H, V, L)
    rates = {"fp32": [], "bf16": []}  # per precision, for every pass one list of (FLOP/s, library), a pair per GEMM

    def mix(passes: list[list[tuple[float, str]]]) -> float:
        """FLOP/s of one training step's GEMMs at each GEMM's best rate over the passes."""
        best = [max(rate for rate, _ in timed) for timed in zip(*passes)]
        flops = [times * 2 * M * K * N for (_, M, K, N, times) in gemms]
        return sum(flops) / sum(f / r for f, r in zip(flops, best))

    def time_passes(when: str) -> None:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            passes = [[gemm_rate(M, K, N, dtype) for _, M, K, N, _ in gemms] for _ in range(a.rounds)]
            rates[name] += passes
            emit(kind="gemm_mix", precision=name, when=when, tflops=round(mix(passes) / 1e12, 4))

    time_passes("before training")
    out = Path(tempfile.mkdtemp(prefix="storyloom-roofline-"))
    # Without AVX-512 or AMX (AMD Zen 3) bf16 matmuls are emulated and the LSTM kernel has no bf16 at all: that
    # machine trains in fp32, so fp32's roofline is the one its trainer answers to.
    trained = ("fp32", "bf16") if runtime.bf16_lstm_runs(torch.device("cpu")) else ("fp32",)
    achieved = []
    for name in trained:
        for kernel in a.lstm_kernels.split(","):
            run = storyloom.train(["shakespeare"], out=out / f"{name}-{kernel}", preset=a.preset, minutes=a.seconds / 60,
                                  evals=1, patience=0, precision=name, lstm_kernel=kernel, progress=False)
            rows = [r for r in storyloom.metrics(run) if "tokens_per_s" in r]
            rows = rows[1:] or rows  # the first interval holds the warm-up
            cps = sorted(r["tokens_per_s"] for r in rows)[len(rows) // 2]
            achieved.append((name, kernel, Run.open(run).info()["lstm_kernel"], cps))
    time_passes("after training")
    roof = {name: mix(passes) for name, passes in rates.items()}
    for name, passes in rates.items():
        for (g, M, K, N, _), timed in zip(gemms, zip(*passes)):
            rate, lib = max(timed)
            emit(kind="gemm", precision=name, gemm=g, M=M, K=K, N=N, tflops=round(rate / 1e12, 4), library=lib,
                 rounds_tflops=[round(r / 1e12, 4) for r, _ in timed])
        emit(kind="roofline", precision=name, tflops=round(roof[name] / 1e12, 4),
             note=f"the model's GEMM mix at the best of {len(passes)} passes' rates, half before training, half after")
    for name, kernel, ran, cps in achieved:
        model = cps * flops_per_char
        emit(kind="trainer", precision=name, lstm_kernel=kernel, ran=ran,
             chars_per_s=cps, model_tflops=round(model / 1e12, 4),
             roofline_tflops=round(roof[name] / 1e12, 4), ratio=round(model / roof[name], 3),
             bf16_matmul_roofline_tflops=round(roof["bf16"] / 1e12, 4), ratio_to_bf16_roofline=round(model / roof["bf16"], 3))


if __name__ == "__main__":
    main()
