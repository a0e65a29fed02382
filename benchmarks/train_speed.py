"""Training speed: storyloom against a plain PyTorch loop and against the seeds' recipe.

    python benchmarks/train_speed.py                        # speed of every arm, then 10 minutes of each quality arm
    python benchmarks/train_speed.py --minutes 0 --speed-seconds 20     # speed only
    python benchmarks/train_speed.py --quality storyloom-bf16,seeds-recipe

Arms, all on the bundled corpus's benchmark split, on whatever device torch picks:
- storyloom-bf16, storyloom-fp32: `storyloom.train` with the `default` preset.
- storyloom-seeds-model: `storyloom.train` with the `shakespeare` preset, seed
  001's own model (one-hot, LSTM 128) in storyloom's regime: the like-for-like
  comparison with the seeds' recipe, where only the way of training differs.
- plain-bf16, plain-fp32: the same model (embedding 128 -> LSTM 768 -> head)
  in the loop a PyTorch user would write: nn.LSTM, contiguous streams of
  truncated BPTT with the state carried, every position a target, Adam at a
  constant rate, clipping.
- seeds-recipe: seed 001 in PyTorch: every window of 40 characters (step 1)
  one-hot, LSTM(128), a softmax head, only the window's next character a
  target; Adam at Keras's 1e-3, batches of 64 shuffled windows, fp32.

Speed runs alternate the arms over `--rounds` rounds after a throwaway
warm-up run (a process is slower in its first minute), and report medians.
"Characters learned per second" counts targets: B*T per step for the first
two kinds, 64 per step for the seeds' recipe. Speed is timed over training
steps only, after warm-up (the first quarter of `--speed-seconds`). Quality: val bpc after 2 minutes and after
`--minutes`. The storyloom arms' clock counts everything (evaluations
included, as `storyloom train --minutes` does); the reference loops' clock
stops while they are evaluated, which favours them. Their bpc is exact: the
plain model reads the validation text as one stream; the seeds' model
predicts each character from the 40 before it, as it was trained to.
storyloom's 2-minute figure is its own evaluation at that point (16
warm-started streams, equal to one stream within 1e-4 bpc), its final
figure an exact one-stream re-score of its best weights.

Prints JSON lines: a config line, then one per measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import storyloom  # noqa: E402
from machine import describe  # noqa: E402
from storyloom import presets  # noqa: E402
from storyloom.prepared import load_prepared  # noqa: E402
from storyloom.runtime import autocast, device  # noqa: E402

LN2 = math.log(2)
# arm -> (preset, precision) for storyloom's own arms
STORYLOOM = {"storyloom-bf16": ("default", "bf16"), "storyloom-fp32": ("default", "fp32"),
             "storyloom-seeds-model": ("shakespeare", "bf16")}
ARMS = (*STORYLOOM, "plain-bf16", "plain-fp32", "seeds-recipe")


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


# -- reference (a): the plain truncated-BPTT loop ----------------------------
class Plain(nn.Module):
    def __init__(self, V: int, E: int, H: int):
        super().__init__()
        self.emb, self.lstm, self.head = nn.Embedding(V, E), nn.LSTM(E, H, batch_first=True), nn.Linear(H, V)

    def forward(self, x, state=None):
        h, state = self.lstm(self.emb(x), state)  # (B, T, H)
        return self.head(h), state  # (B, T, V)


class PlainLoop:
    def __init__(self, train: np.ndarray, val: np.ndarray, V: int, precision: str, dev: torch.device):
        cfg = presets.build("default")
        m, t = cfg.model, cfg.train
        self.B, self.T, self.precision, self.dev = t.batch_size, t.seq_len, precision, dev
        self.model = Plain(V, m.embed, m.hidden).to(dev)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=t.lr)
        L = (len(train) - 1) // self.B
        self.data = torch.from_numpy(train[: self.B * L + 1].astype(np.int64))
        self.L, self.k, self.state, self.val = L, 0, None, val
        self.learned_per_step = self.B * self.T

    def step(self) -> None:
        if (self.k + 1) * self.T >= self.L:
            self.k, self.state = 0, None
        s = torch.arange(self.B)[:, None] * self.L + self.k * self.T + torch.arange(self.T + 1)  # (B, T+1)
        w = self.data[s].to(self.dev)
        self.k += 1
        with autocast(self.precision, self.dev):
            logits, state = self.model(w[:, :-1], self.state)
        loss = F.cross_entropy(logits.float().flatten(0, 1), w[:, 1:].flatten())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.state = tuple(x.detach() for x in state)

    @torch.no_grad()
    def bpc(self) -> float:
        ids = torch.from_numpy(self.val.astype(np.int64)).to(self.dev)
        total, state = 0.0, None
        for s in range(0, len(ids) - 1, 512):
            x, y = ids[s : s + 512][None], ids[s + 1 : s + 513][None]
            x = x[:, : y.shape[1]]
            logits, state = self.model(x, state)
            total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        return total / (len(ids) - 1) / LN2


# -- reference (b): the seeds' recipe ----------------------------------------
class SeedsModel(nn.Module):
    def __init__(self, V: int, H: int = 128):
        super().__init__()
        self.V, self.lstm, self.head = V, nn.LSTM(V, H, batch_first=True), nn.Linear(H, V)

    def forward(self, x):
        h, _ = self.lstm(F.one_hot(x, self.V).float())  # (B, 40, H)
        return self.head(h[:, -1])  # (B, V): the next character only


class SeedsLoop:
    WINDOW, BATCH = 40, 64

    def __init__(self, train: np.ndarray, val: np.ndarray, V: int, dev: torch.device, seed: int = 0):
        self.model, self.dev = SeedsModel(V).to(dev), dev
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.data = torch.from_numpy(train.astype(np.int64))
        self.val = torch.from_numpy(val.astype(np.int64))
        self.rng = np.random.default_rng(seed)
        self.order, self.k = self.rng.permutation(len(train) - self.WINDOW), 0
        self.learned_per_step = self.BATCH

    def step(self) -> None:
        if self.k + self.BATCH > len(self.order):
            self.order, self.k = self.rng.permutation(len(self.order)), 0
        starts = torch.from_numpy(self.order[self.k : self.k + self.BATCH])
        self.k += self.BATCH
        w = self.data[starts[:, None] + torch.arange(self.WINDOW + 1)].to(self.dev)  # (64, 41)
        loss = F.cross_entropy(self.model(w[:, :-1]), w[:, -1])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    @torch.no_grad()
    def bpc(self, batch: int = 4096) -> float:
        """Each validation character after the first 40, predicted from the 40 before it."""
        ids, W = self.val.to(self.dev), self.WINDOW
        total, n = 0.0, len(ids) - W
        for s in range(0, n, batch):
            starts = torch.arange(s, min(s + batch, n), device=self.dev)
            w = ids[starts[:, None] + torch.arange(W + 1, device=self.dev)]
            total += F.cross_entropy(self.model(w[:, :-1]), w[:, -1], reduction="sum").item()
        return total / n / LN2


def make_loop(arm: str, corpus, dev):
    V = len(corpus.tokenizer)
    train = np.asarray(corpus.train)
    if arm == "seeds-recipe":
        return SeedsLoop(train, corpus.val, V, dev)
    return PlainLoop(train, corpus.val, V, arm.split("-")[1], dev)


def loop_speed(loop, seconds: float) -> float:
    warm = time.perf_counter()
    while time.perf_counter() - warm < seconds / 4:  # the same warm-up share as storyloom's arms leave out
        loop.step()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        loop.step()
        steps += 1
    return steps * loop.learned_per_step / (time.perf_counter() - t0)


def loop_quality(loop, minutes: float, at: float = 2.0) -> dict:
    """Train for `minutes` of step time; exact val bpc at `at` minutes and at the end."""
    out, spent, steps, marks = {}, 0.0, 0, sorted({min(at, minutes), minutes})
    for mark in marks:
        while spent < mark * 60:
            t = time.perf_counter()
            loop.step()
            spent += time.perf_counter() - t
            steps += 1
        out[f"val_bpc_{mark:g}min"] = loop.bpc()
    out.update(steps=steps, chars_learned_per_s=steps * loop.learned_per_step / spent)
    return out


# -- storyloom itself --------------------------------------------------------
def storyloom_run(prep: Path, out: Path, arm: str, minutes: float, evals: int, log_every: int = 20) -> Path:
    preset, precision = STORYLOOM[arm]
    return storyloom.train([str(prep)], out=out, preset=preset, minutes=minutes, evals=evals, patience=0,
                           precision=precision, progress=False, overwrite=True, log_every=log_every)


def storyloom_speed(prep: Path, out: Path, arm: str, seconds: float) -> float:
    rows = [r for r in storyloom.metrics(storyloom_run(prep, out, arm, seconds / 60, 1, log_every=5)) if "tokens_per_s" in r]
    rows = rows[len(rows) // 4 :] or rows  # the first quarter holds the warm-up (oneDNN builds its kernels, memory settles)
    return sorted(r["tokens_per_s"] for r in rows)[len(rows) // 2]


def storyloom_quality(prep: Path, out: Path, arm: str, minutes: float, val_text: str) -> dict:
    path = storyloom_run(prep, out, arm, minutes, max(1, round(minutes / 2)))
    rows = storyloom.metrics(path)
    evals = [r for r in rows if "val_bpc" in r]
    at2 = min(evals, key=lambda r: abs(r["elapsed_s"] - 120))
    speed = sorted(r["tokens_per_s"] for r in rows if "tokens_per_s" in r)
    return {"val_bpc_2min": at2["val_bpc"], "val_bpc_2min_at_s": at2["elapsed_s"],
            f"val_bpc_{minutes:g}min": storyloom.load(path).score(val_text)["bpc"],
            "steps": rows[-1]["step"], "chars_learned_per_s": speed[len(speed) // 2] if speed else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed-seconds", type=float, default=30.0, help="timed training per arm for the speed table")
    ap.add_argument("--rounds", type=int, default=2, help="speed runs per arm, alternated; the median is reported")
    ap.add_argument("--minutes", type=float, default=10.0, help="training per quality arm (0: speed only)")
    ap.add_argument("--speed", default=",".join(ARMS), help="arms in the speed table")
    ap.add_argument("--quality", default="storyloom-bf16,plain-bf16,seeds-recipe", help="arms trained for --minutes")
    a = ap.parse_args()
    speed_arms, quality_arms = [s for s in a.speed.split(",") if s], [s for s in a.quality.split(",") if s]
    for arm in speed_arms + quality_arms:
        if arm not in ARMS:
            ap.error(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    dev = device("auto")
    cfg = presets.build("default")
    work = Path(tempfile.mkdtemp(prefix="storyloom-train-speed-"))
    prep = work / "prepared"
    storyloom.prepare(["shakespeare"], prep)  # the bundled corpus, its fixed benchmark split
    corpus, _ = load_prepared(prep)
    val_text = corpus.tokenizer.decode(corpus.val)
    emit(kind="config", device=str(dev), machine=describe(), torch=torch.__version__,
         threads=torch.get_num_threads(), preset="default", B=cfg.train.batch_size, T=cfg.train.seq_len,
         embed=cfg.model.embed, hidden=cfg.model.hidden, lr=cfg.train.lr, train_chars=len(corpus.train),
         val_chars=len(corpus.val), speed_seconds=a.speed_seconds, minutes=a.minutes)

    # A process runs slower in its first minute (measured here: the same plain loop at 16.6k chars/s
    # first, 22.1k third), so a throwaway warm-up comes first and the arms alternate over rounds.
    loop_speed(make_loop("plain-bf16", corpus, dev), a.speed_seconds)
    runs: dict[str, list[float]] = {arm: [] for arm in speed_arms}
    for rnd in range(a.rounds):
        for arm in speed_arms:
            torch.manual_seed(0)
            if arm in STORYLOOM:
                cps = storyloom_speed(prep, work / arm, arm, a.speed_seconds)
            else:
                cps = loop_speed(make_loop(arm, corpus, dev), a.speed_seconds)
            runs[arm].append(cps)
            emit(kind="speed", arm=arm, round=rnd + 1, chars_learned_per_s=round(cps, 1))
    speeds = {arm: float(np.median(v)) for arm, v in runs.items()}
    for arm, cps in speeds.items():
        emit(kind="speed_median", arm=arm, chars_learned_per_s=round(cps, 1), rounds=a.rounds)
    for arm, cps in speeds.items():
        ratios = {f"x_{ref}": round(cps / speeds[ref], 2) for ref in ("plain-bf16", "plain-fp32", "seeds-recipe")
                  if ref in speeds and ref != arm}
        if ratios:
            emit(kind="ratio", arm=arm, **ratios)

    if a.minutes > 0:
        for arm in quality_arms:
            torch.manual_seed(0)
            t = time.perf_counter()
            if arm in STORYLOOM:
                r = storyloom_quality(prep, work / f"{arm}-quality", arm, a.minutes, val_text)
            else:
                r = loop_quality(make_loop(arm, corpus, dev), a.minutes)
            emit(kind="quality", arm=arm, minutes=a.minutes, wall_s=round(time.perf_counter() - t, 1),
                 **{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})


if __name__ == "__main__":
    main()
