"""Would a hand-written LSTM backward beat oneDNN's? The candidate against torch's fused LSTM, side by side.

    python benchmarks/lstm_backward.py                 # the default preset's shapes, eager and compiled
    python benchmarks/lstm_backward.py --no-compile --rounds 3
    python benchmarks/lstm_backward.py --precision fp32   # as training runs where bf16 is not native (auto's pick)

First it times the recurrence's per-step product on its own: through torch.mm,
and with the weight packed for oneDNN once beforehand.

The profile (benchmarks/README.md, "Where the time goes") put the gap to the
roofline in oneDNN's LSTM backward, which runs at about half the rate of its
own GEMMs. The candidate computes the input projection for the whole sequence
as one GEMM (autograd differentiates it: its weight gradient is one GEMM over
every step), steps the recurrence (one (B, H) @ (H, 4H) product and the gates
per step, saving the gates), and in its backward walks the steps back
computing only the recurrent part, then the recurrent weight gradient as one
GEMM over the whole sequence. Its per-step loops run eager, and compiled with
`torch.compile` (inductor fuses each step's gate arithmetic into one C++ loop;
compiling needs a C++ compiler and takes tens of seconds per shape); and with
`--packed` (the default) both again with each step's product through a weight
packed for oneDNN once a batch, the packing timed with them. With `--native`
(the default, on x86 CPUs with AVX2) the packed loops also run in C++
(the package's lstm.cpp, what `--lstm-kernel loops` trains with, built on first
use: each step's gate arithmetic one vectorised pass), and a floor row times what any such recurrence must run: its 64
packed products, their packing and its sequence-wide GEMMs, with nothing
between them.

1. Checks the candidate against `nn.LSTM` in fp32: outputs and every gradient
   (exits with status 1 if any relative error exceeds 1e-5), and reports its
   bf16 errors next to oneDNN's own bf16 errors (both against fp32).
2. Times forward + backward of one batch, arms alternated each round, the
   median per arm, in the precision training picks on this machine
   (`--precision auto`: bf16 autocast where it is native, else fp32).

The eager and compiled candidates stay here, not in the package: they measured
slower everywhere (benchmarks/README.md, "Training at the roofline"). The C++
loops went into the package, and `--lstm-kernel auto` times them against torch's kernel on each machine;
run this on a new machine to see which arm wins there, and why.
Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from machine import describe  # noqa: E402
from storyloom import presets, runtime  # noqa: E402
from storyloom.errors import UserError  # noqa: E402
from storyloom.kernels import Recurrence as NativeRecurrence, build_lstm  # noqa: E402


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def packed_product(W: torch.Tensor, B: int):
    """x (B, K) -> x @ W^T for W (N, K), through oneDNN with W packed once beforehand (`mkldnn._reorder_linear_weight`,
    what inductor's freezing does for a linear layer). oneDNN's matmul otherwise repacks the weight at every call;
    a recurrence multiplies by the same weight T times a batch, so packing it once a batch may pay."""
    packed = torch.ops.mkldnn._reorder_linear_weight(W, B)
    return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


def forward_steps(xp, h0, c0, W_hhT, product=None):
    """xp (T, B, 4H): x W_ih^T + b; h0, c0 (B, H); W_hhT (H, 4H) -> gates G (T, B, 4H) as activated (i, f, g, o),
    cell states C (T+1, B, H), tanh(C_t) (T, B, H), outputs Y (T+1, B, H) in the matmul dtype (Y[0] = h0).
    `product`: h -> h @ W_hhT some other way (packed_product)."""
    T, B, H4 = xp.shape
    H = H4 // 4
    h, c = h0.to(W_hhT.dtype), c0
    Gs, Cs, TCs, Ys = [], [c0], [], [h]
    for t in range(T):
        z = (torch.addmm(xp[t], h, W_hhT) if product is None else xp[t] + product(h)).float()  # (B, 4H)
        s = torch.sigmoid(z)
        g = torch.tanh(z[:, 2 * H : 3 * H])
        c = s[:, H : 2 * H] * c + s[:, :H] * g  # C_t = f C_{t-1} + i g
        tc = torch.tanh(c)
        h = (s[:, 3 * H :] * tc).to(W_hhT.dtype)  # h_t = o tanh(C_t)
        Gs.append(torch.cat([s[:, : 2 * H], g, s[:, 3 * H :]], 1))
        Cs.append(c)
        TCs.append(tc)
        Ys.append(h)
    return torch.stack(Gs), torch.stack(Cs), torch.stack(TCs), torch.stack(Ys)


def backward_steps(G, C, TC, W_hh, dy, dc, product=None):
    """The recurrent part of the backward, last step first: dZ (T, B, 4H), the gradient at every gate's input,
    and the gradients of h0 and c0. dy (T, B, H): the loss's gradient at each output; dc (B, H): at C_T."""
    T, B, H4 = G.shape
    H = H4 // 4
    dh = torch.zeros(B, H)
    dZs = []
    for t in range(T - 1, -1, -1):
        i, f, g, o = G[t].split(H, 1)
        dh = dh + dy[t]
        tc = TC[t]
        dc = dc + dh * o * (1 - tc * tc)
        dz = torch.cat([dc * g * i * (1 - i), dc * C[t] * f * (1 - f), dc * i * (1 - g * g), dh * tc * o * (1 - o)], 1)
        dz = dz.to(W_hh.dtype)
        dZs.append(dz)
        dc = dc * f
        dh = (torch.mm(dz, W_hh) if product is None else product(dz)).float()
    return torch.stack(dZs[::-1]), dh, dc


EAGER = (forward_steps, backward_steps)


def forward_packed(xp, h0, c0, W_hhT):
    return forward_steps(xp, h0, c0, W_hhT, packed_product(W_hhT.t().contiguous(), xp.shape[1]))


def backward_packed(G, C, TC, W_hh, dy, dc):
    return backward_steps(G, C, TC, W_hh, dy, dc, packed_product(W_hh.t().contiguous(), G.shape[1]))


PACKED = (forward_packed, backward_packed)  # each batch packs its weight twice, as training would (it changes)

class Recurrence(torch.autograd.Function):
    """The LSTM's recurrence given its input projection: (xp, h0, c0, W_hh) -> (y (T, B, H), C_T); `loops` the
    (forward, backward) step loops to run: EAGER, PACKED, or either compiled."""

    @staticmethod
    def forward(ctx, xp, h0, c0, W_hh, dtype, loops):
        G, C, TC, Y = loops[0](xp.to(dtype), h0, c0, W_hh.t().to(dtype))
        ctx.save_for_backward(G, C, TC, Y, W_hh)
        ctx.dtype, ctx.backward_steps = dtype, loops[1]
        return Y[1:], C[-1].clone()

    @staticmethod
    def backward(ctx, dy, dcT):
        G, C, TC, Y, W_hh = ctx.saved_tensors
        T, B, H4 = G.shape
        dc = dcT.float() if dcT is not None else torch.zeros(B, H4 // 4)
        dZ, dh0, dc0 = ctx.backward_steps(G, C, TC, W_hh.to(ctx.dtype), dy.float(), dc)
        dW_hh = torch.mm(dZ.view(T * B, H4).t(), Y[:-1].reshape(T * B, H4 // 4)).float()  # one GEMM, every step
        return dZ, dh0, dc0, dW_hh, None, None


def candidate(lstm: nn.LSTM, x: torch.Tensor, dtype: torch.dtype, loops=EAGER) -> torch.Tensor:
    """The same function as lstm(x)[0] for one layer from a zero state: x (B, T, I) -> (B, T, H); loops "native":
    storyloom's lstm.cpp (kernels.Recurrence)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        b = lstm.bias_ih_l0 + lstm.bias_hh_l0
        xp = F.linear(x.transpose(0, 1), lstm.weight_ih_l0, b)  # (T, B, 4H): one GEMM over the whole sequence
    z = torch.zeros(x.shape[0], lstm.hidden_size)
    with torch.autocast("cpu", enabled=False):  # the recurrence casts for itself: `dtype` for its products
        if loops == "native":
            y, _ = NativeRecurrence.apply(xp, z, z, lstm.weight_hh_l0, dtype)
        else:
            y, _ = Recurrence.apply(xp, z, z, lstm.weight_hh_l0, dtype, loops)
    return y.transpose(0, 1)


def floor(B: int, T: int, I: int, H: int, dtype: torch.dtype):
    """What any hand-written recurrence on packed weights runs for one batch with nothing between: packing W_hh both
    ways, 2T per-step products of (B, H) or (B, 4H) by it, and the four sequence-wide GEMMs (the input projection,
    the input's gradient, both weight gradients)."""
    W, W_ih = (torch.randn(4 * H, H) / H**0.5).to(dtype), torch.randn(4 * H, I).to(dtype)
    h, dz = torch.randn(B, H).to(dtype), torch.randn(B, 4 * H).to(dtype)
    X, Y, dZ = torch.randn(T * B, I).to(dtype), torch.randn(T * B, H).to(dtype), torch.randn(T * B, 4 * H).to(dtype)

    def run():
        forward, backward = packed_product(W, B), packed_product(W.t().contiguous(), B)
        for _ in range(T):
            forward(h)
        for _ in range(T):
            backward(dz)
        torch.mm(X, W_ih.t()), torch.mm(dZ, W_ih), torch.mm(dZ.t(), Y), torch.mm(dZ.t(), X)
    return run


def product_times(B: int, H: int, dtype: torch.dtype, reps: int = 200, rounds: int = 5) -> dict:
    """The recurrence's per-step products in `dtype`, microseconds: h (B, H) @ W_hh^T and dZ (B, 4H) @ W_hh, through
    torch.mm, and through oneDNN with W_hh packed once beforehand (packed_product)."""
    W = (torch.randn(4 * H, H) / H**0.5).to(dtype)
    h, dz = torch.randn(B, H).to(dtype), torch.randn(B, 4 * H).to(dtype)
    WT, forward, backward = W.t().contiguous(), packed_product(W, B), packed_product(W.t().contiguous(), B)
    arms = {"forward, torch.mm": lambda: torch.mm(h, WT), "forward, packed": lambda: forward(h),
            "backward, torch.mm": lambda: torch.mm(dz, W), "backward, packed": lambda: backward(dz)}
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(rounds):
        for name, f in arms.items():
            for _ in range(10):
                f()
            t = time.perf_counter()
            for _ in range(reps):
                f()
            times[name].append((time.perf_counter() - t) / reps * 1e6)
    return {k: round(statistics.median(v), 1) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20, help="batches timed per arm and round")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--packed", action=argparse.BooleanOptionalAction, default=True,
                    help="also the candidate with its per-step products through packed weights (oneDNN)")
    ap.add_argument("--native", action=argparse.BooleanOptionalAction, default=True,
                    help="also the packed loops in C++ (storyloom/lstm.cpp, built once: needs a C++ compiler and AVX2), and "
                         "the floor of any such recurrence")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="the products' precision (auto: what training picks here)")
    a = ap.parse_args()
    try:
        precision = runtime.resolve_precision(a.precision, torch.device("cpu"))
    except UserError as e:  # bf16 asked where oneDNN has no bf16 LSTM: the trainer's own one-line refusal
        sys.exit(str(e))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    cfg = presets.build(a.preset)
    if cfg.model.cell != "lstm" or cfg.model.layers != 1:
        sys.exit(f"--preset {a.preset}: the candidate is one LSTM layer; choose a one-layer LSTM preset")
    B, T, I, H = cfg.train.batch_size, cfg.train.seq_len, cfg.model.input_size, cfg.model.hidden
    emit(kind="config", preset=a.preset, B=B, T=T, I=I, H=H, precision=precision, threads=torch.get_num_threads(),
         machine=describe())
    a.packed = a.packed and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and torch.backends.mkldnn.is_available()
    if a.native:
        why = (build_lstm() or None) if a.packed else "the C++ loops multiply through packed weights, and there are none here"
        emit(kind="native", built=why is None, **({"why_not": why} if why else {}))
        a.native = why is None
    if a.packed:
        us = product_times(B, H, dtype)
        emit(kind="product", precision=precision, M=B, H=H, microseconds=us,
             packed_speedup={d: round(us[f"{d}, torch.mm"] / us[f"{d}, packed"], 2) for d in ("forward", "backward")})
    torch.manual_seed(0)
    lstm = nn.LSTM(I, H, 1, batch_first=True)
    x = torch.randn(B, T, I, requires_grad=True)
    w = torch.randn(B, T, H)
    params = [*lstm.parameters(), x]

    def onednn(dtype):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y, _ = lstm(x)
        (y.float() * w).sum().backward()
        return y

    def ours(dtype, loops=EAGER):
        y = candidate(lstm, x, dtype, loops)
        (y.float() * w).sum().backward()
        return y

    def ours_packed(dtype):
        return ours(dtype, PACKED)

    def ours_native(dtype):
        return ours(dtype, "native")

    def grads(fn, dtype):
        for p in params:
            p.grad = None
        y = fn(dtype)
        return [y.detach().float(), *(p.grad.clone() for p in params)]

    names = ["output", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "input"]
    ref = grads(onednn, torch.float32)
    errors = {}
    checks = [("candidate fp32", ours, torch.float32)]
    if a.packed:
        checks.append(("candidate fp32, packed products", ours_packed, torch.float32))
    if a.native:
        checks.append(("candidate fp32, C++ loops", ours_native, torch.float32))
    if precision == "bf16":
        checks += [("candidate bf16", ours, torch.bfloat16), ("oneDNN bf16", onednn, torch.bfloat16)]
        if a.native:
            checks.append(("candidate bf16, C++ loops", ours_native, torch.bfloat16))
    for arm, fn, check_dtype in checks:
        try:
            got = grads(fn, check_dtype)
        except RuntimeError as e:  # the C++ loops on a CPU oneDNN cannot pack for in bf16: say so, time the rest
            if fn is not ours_native:
                raise
            emit(kind="check", arm=arm, error=f"{type(e).__name__}: {str(e).strip()[:200]}")
            a.native = False
            continue
        errors[arm] = {n: float((g - r).norm() / r.norm()) for n, g, r in zip(names, got, ref)}
        emit(kind="check", arm=arm, relative_error_against_fp32_nn_lstm={n: f"{e:.2e}" for n, e in errors[arm].items()})
    for arm, _, check_dtype in checks:  # bf16 errs by a few 1e-3 (oneDNN's own kernel too): 10x that is a bug
        if arm in errors and max(errors[arm].values()) > (1e-5 if check_dtype == torch.float32 else 5e-2):
            sys.exit(f"the {arm} differs from nn.LSTM")

    arms = {"oneDNN (nn.LSTM)": onednn, "candidate, eager": ours}
    if a.packed:
        arms["candidate, eager, packed products"] = ours_packed
    if a.native:
        arms["candidate, C++ loops, packed products"] = ours_native
        run_floor = floor(B, T, I, H, dtype)
        arms["floor: its packed products and GEMMs alone"] = lambda dtype: run_floor()
    if a.compile:
        t = time.perf_counter()
        compiled = tuple(torch.compile(f, dynamic=False) for f in EAGER)
        arms["candidate, compiled"] = lambda dtype: ours(dtype, compiled)
        grads(arms["candidate, compiled"], dtype)
        emit(kind="compile", seconds=round(time.perf_counter() - t, 1))
        if a.packed:
            t = time.perf_counter()
            compiled_packed = tuple(torch.compile(f, dynamic=False) for f in PACKED)
            try:
                grads(lambda d: ours(d, compiled_packed), dtype)
            except Exception as e:  # torch 2.13's inductor fails an assertion on the packed op: say so, time the rest
                emit(kind="compile", arm="packed products", error=f"{type(e).__name__}: {str(e).strip()[:200]}")
            else:
                arms["candidate, compiled, packed products"] = lambda dtype: ours(dtype, compiled_packed)
                emit(kind="compile", arm="packed products", seconds=round(time.perf_counter() - t, 1))
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(a.rounds):
        for name, fn in arms.items():
            for _ in range(3):
                fn(dtype)
            t = time.perf_counter()
            for _ in range(a.reps):
                fn(dtype)
            times[name].append((time.perf_counter() - t) / a.reps * 1e3)
    base = statistics.median(times["oneDNN (nn.LSTM)"])
    for name, ms in times.items():
        m = statistics.median(ms)
        emit(kind="time", arm=name, precision=precision, ms_forward_backward=round(m, 2), rounds=[round(v, 2) for v in ms],
             speed_vs_onednn=round(base / m, 3))


if __name__ == "__main__":
    main()
