"""Training and evaluation.

fit() runs truncated BPTT: B contiguous streams, T steps a batch, the LSTM
state carried (detached) from batch to batch and reset at each epoch. AdamW
with linear warmup then cosine decay over the run's progress, gradient-norm
clipping, evaluation at equal steps of progress, early stopping, and
checkpoints that resume exactly. A step whose loss or gradient is not finite
is skipped; too many in a row restore the last checkpoint at a lower rate.
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .batches import Batches
from .corpus import Corpus
from .config import TrainConfig
from .model import LanguageModel, State, detach
from .runs import Run
from .errors import UserError
from .runtime import autocast

LN2 = math.log(2)


@torch.no_grad()
def evaluate(model: LanguageModel, ids: np.ndarray, precision: str = "fp32", streams: int = 1, warmup: int = 512,
             chunk: int = 512, chars: int | None = None, extra_nats: float = 0.0, limit: int = 0) -> dict:
    """Cross-entropy of `ids` with carried state; every token after the first is scored.

    bpc is (the scored tokens' nats + extra_nats) / chars / ln 2, where chars
    is how many characters the scored tokens cover (at char level, one each)
    and extra_nats what the tokenizer charges outside the model (spelling out
    <unk> words): so runs at every level compare. Also token_perplexity and tokens.

    streams=1 reads the text as one stream: the exact figure, and what
    `storyloom eval` reports. A batch-1 LSTM is memory-bound (about 20k
    chars/s here), so evaluations during training read `streams` contiguous
    pieces side by side instead, each first warmed up (unscored) on the
    `warmup` tokens before it, so its state matches the one-stream state.
    With `limit`, a text of more tokens is sampled: `streams` pieces of
    limit/streams tokens spread evenly over it, the same pieces every time,
    and chars and extra_nats scaled to the share scored (exact at char level).
    """
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    n = len(ids) - 1
    if n < 1:
        raise ValueError("evaluation needs at least two tokens")
    S, W = streams, warmup
    sampled = S > 1 and limit and n > max(limit, 4 * S * W)
    if sampled:
        L = limit // S
        first = [W + k * (n - W - L) // (S - 1) for k in range(S)]  # first scored target of each piece
        last = [f + L for f in first]
    elif S > 1 and n > 4 * S * W:
        L = -(-(n - W) // S)
        first = [0] + [k * L + W for k in range(1, S)]  # piece 0 scores from the start, with no warm-up
        last = [min(f + L, n) for f in first]
        last[0] = L + W
    else:
        S, L, W, first, last = 1, n, 0, [0], [n]
    # Piece k reads inputs [first_k - W, last_k) (from 0 for the piece starting there) and scores targets from first_k.
    x = torch.zeros(S, L + W, dtype=torch.long)  # (S, L+W)
    y = torch.full((S, L + W), -100, dtype=torch.long)  # -100: not scored
    for k, (f, b) in enumerate(zip(first, last)):
        a = max(f - W, 0)
        piece = torch.from_numpy(np.asarray(ids[a : b + 1]).astype(np.int64))
        x[k, : b - a] = piece[:-1]
        y[k, f - a : b - a] = piece[f - a + 1 :]
    total = torch.zeros((), dtype=torch.float64)
    state = None
    for s in range(0, x.shape[1], chunk):
        xs, ys = x[:, s : s + chunk].to(dev), y[:, s : s + chunk].to(dev)
        with autocast(precision, dev):
            logits, state = model(xs, state)  # (S, T, V)
        total += F.cross_entropy(logits.float().flatten(0, 1), ys.flatten(), reduction="sum", ignore_index=-100).double().cpu()
    model.train(was_training)
    scored = int((y != -100).sum())
    chars = n if chars is None else chars
    if sampled:  # scale the text's characters and outside charges to the share scored
        chars, extra_nats = chars * scored / n, extra_nats * scored / n
    nats = (total.item() + extra_nats) / chars
    return {"bpc": nats / LN2, "nats_per_char": nats, "perplexity": math.exp(nats), "chars": chars,
            "token_perplexity": math.exp(total.item() / scored), "tokens": scored}


def val_fields(r: dict) -> dict:
    """An evaluation as metrics.jsonl records it."""
    return {"val_bpc": r["bpc"], "val_nats_per_char": r["nats_per_char"], "val_perplexity": r["perplexity"]}


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # Decay matrices only: decaying biases and the forget-gate bias init fights the init.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else 1.0
    cos = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


@dataclass
class Position:
    """Where training is: all a checkpoint needs besides tensors."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # next batch index within the epoch
    elapsed: float = 0.0  # wall-clock seconds spent so far, across resumes
    evals_done: int = 0
    best_bpc: float = float("inf")
    bad_evals: int = 0  # evaluations since the best one
    history: list = field(default_factory=list)  # (step, elapsed, val_bpc) per evaluation
    # since the last metrics row: summed loss, steps, characters, seconds in steps
    acc_loss: float = 0.0
    acc_steps: int = 0
    acc_tokens: int = 0
    acc_time: float = 0.0
    stopped: str = ""  # why the last session ended: "", "limit", "patience" or "interrupted"
    skipped: int = 0  # steps skipped for a non-finite loss or gradient, over the whole run
    bad_streak: int = 0  # non-finite steps in a row, now
    recoveries: int = 0  # times the last checkpoint was restored after bad_steps non-finite steps
    lr_scale: float = 1.0  # halved at each recovery


MAX_RECOVERIES = 3  # then training stops: the learning rate is 1/8 of the asked one and it still diverges


def rng_to_checkpoint() -> tuple[dict[str, torch.Tensor], dict]:
    """Every random stream training may touch: torch (and CUDA), numpy, python."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors = {"rng.torch": torch.get_rng_state(), "rng.numpy": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = st
    meta = {"numpy": [name, int(pos), int(has_gauss), float(gauss)], "python": random.getstate()}
    return tensors, meta


def rng_from_checkpoint(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    name, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


def opt_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors = {f"opt.{i}.{k}": v for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def opt_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


class Trainer:
    def __init__(self, model: LanguageModel, corpus: Corpus, cfg: TrainConfig, run: Run, precision: str):
        self.model, self.cfg, self.run, self.precision = model, cfg, run, precision
        train_ids = corpus.train
        self.dev = next(model.parameters()).device
        self.batches = Batches(train_ids, cfg.batch_size, cfg.seq_len)
        self.corpus = corpus
        self.chars_per_token = corpus.train_chars / len(corpus.train)
        # fused: one kernel per parameter for the whole update; on this CPU it
        # made training 17% faster than the per-op loop (benchmarks/README.md).
        self.opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.99), fused=True)
        self.pos = Position()
        self.loss_sum = torch.zeros((), device=self.dev)  # summed where the loss is; read only when logging
        self.state: State | None = None
        self.stop_requested = False
        self.last_checkpoint = time.perf_counter()

    def request_stop(self, *_) -> None:
        """Finish the current step, checkpoint and return (SIGINT and SIGTERM call this)."""
        self.stop_requested = True

    # -- progress --------------------------------------------------------
    def progress(self) -> float:
        c, p = self.cfg, self.pos
        parts = []
        if c.steps:
            parts.append(p.step / c.steps)
        if c.epochs:
            parts.append((p.epoch * len(self.batches) + p.batch) / (c.epochs * len(self.batches)))
        if c.minutes:
            parts.append(p.elapsed / (c.minutes * 60))
        return max(parts)

    # -- checkpoints -----------------------------------------------------
    def checkpoint(self) -> None:
        self.pos.acc_loss = float(self.loss_sum)
        tensors, groups = opt_to_tensors(self.opt)
        rng, rng_meta = rng_to_checkpoint()
        tensors.update(rng)
        if self.state is not None:
            tensors.update({f"state.{i}": s.float() for i, s in enumerate(self.state)})
        meta = {"position": self.pos.__dict__, "param_groups": groups, "rng": rng_meta}
        self.run.save_checkpoint(self.pos.step, self.model, tensors, meta, self.cfg.keep)
        self.last_checkpoint = time.perf_counter()

    def restore(self) -> None:
        """Continue exactly from the run's newest checkpoint."""
        ck = self.run.latest()
        tensors, meta = ck.trainer()
        self.model.load_state_dict(ck.weights())
        opt_from_tensors(self.opt, tensors, meta["param_groups"])
        rng_from_checkpoint(tensors, meta["rng"])
        self.pos = Position(**meta["position"])
        self.loss_sum = torch.tensor(self.pos.acc_loss, device=self.dev)
        parts = sorted((k for k in tensors if k.startswith("state.")), key=lambda k: int(k.split(".")[1]))
        self.state = tuple(tensors[k].to(self.dev) for k in parts) or None
        self.run.truncate_metrics(self.pos.step)

    def recover(self) -> None:
        """After bad_steps non-finite steps in a row: back to the last checkpoint, at half the learning rate."""
        now = self.pos
        if now.recoveries >= MAX_RECOVERIES:
            at = self.run.latest()
            raise UserError(f"training diverged: {now.bad_streak} non-finite steps in a row after {now.recoveries} restores "
                            f"at ever lower learning rates; the last good checkpoint (step {at.step}) is kept in "
                            f"{self.run.path}; retrain with a lower --lr or a smaller --clip")
        self.restore()
        # Time, faults and recoveries are the run's history, not the checkpoint's.
        self.pos.elapsed, self.pos.skipped = now.elapsed, now.skipped
        self.pos.recoveries, self.pos.lr_scale, self.pos.bad_streak = now.recoveries + 1, now.lr_scale / 2, 0
        self.run.append_metrics({"step": self.pos.step, "epoch": self.pos.epoch, "elapsed_s": round(now.elapsed, 3),
                                 "event": "restored after non-finite steps", "skipped": now.skipped,
                                 "lr_scale": self.pos.lr_scale})

    # -- the loop --------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor | None:
        """One optimizer step; None (and nothing changed) if the loss or the gradient is not finite."""
        for g in self.opt.param_groups:
            g["lr"] = lr
        state = self.state
        if state is not None and self.cfg.reset_prob:
            # A model that only ever continues long streams can learn dynamics
            # that blow up from a fresh state (seen here: 12 bpc on a text
            # opening with a rare capital). Zeroing a few streams' state at
            # random makes it learn to start anywhere.
            keep = (torch.rand(x.shape[0]) >= self.cfg.reset_prob).to(self.dev)  # (B,)
            state = tuple(s * keep[None, :, None].to(s.dtype) for s in state)
        with autocast(self.precision, self.dev):
            logits, state = self.model(x, state)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if not bool(torch.isfinite(loss.detach() + norm)):
            self.opt.zero_grad(set_to_none=True)
            return None
        if self.cfg.clip:
            torch.nn.utils.clip_grads_with_norm_(params, self.cfg.clip, norm)
        self.opt.step()
        self.state = detach(state)
        return loss.detach()

    def evaluate_now(self) -> dict:
        """Validation bpc now; keeps the weights as best.safetensors when they are the best yet."""
        c = self.corpus
        r = evaluate(self.model, c.val, self.precision, streams=16, chars=c.val_chars, extra_nats=c.val_extra_nats,
                     limit=self.cfg.eval_tokens)
        p = self.pos
        p.evals_done += 1
        p.history.append((p.step, round(p.elapsed, 3), r["bpc"]))
        if r["bpc"] < p.best_bpc:
            p.best_bpc, p.bad_evals = r["bpc"], 0
            self.run.save_weights(self.model, "best")
        else:
            p.bad_evals += 1
        return r

    def _catch_signals(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    def checkpoint_due(self, evaluated: bool) -> bool:
        c = self.cfg
        return (evaluated or bool(c.checkpoint_every and self.pos.step % c.checkpoint_every == 0)
                or bool(c.checkpoint_minutes and time.perf_counter() - self.last_checkpoint >= 60 * c.checkpoint_minutes))

    def fit(self, show_progress: bool = True) -> Position:
        c, p, n = self.cfg, self.pos, len(self.batches)
        self.model.train()
        bar_total = c.steps or (int(c.epochs * n) if c.epochs else int(c.minutes * 60))
        bar = tqdm(total=bar_total, initial=0, unit="step" if (c.steps or c.epochs) else "s", disable=None if show_progress else True, dynamic_ncols=True)
        last_val = p.history[-1][2] if p.history else None
        t0 = time.perf_counter()
        start_elapsed = p.elapsed
        self.last_checkpoint = t0
        handlers = self._catch_signals()
        try:
            while self.progress() < 1.0 and not self.stop_requested:
                if p.batch >= n:
                    p.epoch, p.batch, self.state = p.epoch + 1, 0, None
                    continue
                x, y = self.batches[p.batch]
                if self.dev.type == "cuda":  # a copy from page-locked memory can overlap the GPU's work
                    x, y = x.pin_memory(), y.pin_memory()
                x, y = x.to(self.dev, non_blocking=True), y.to(self.dev, non_blocking=True)
                ts = time.perf_counter()
                lr = lr_at(c, p.step, self.progress()) * p.lr_scale
                loss = self.step(x, y, lr)
                p.step, p.batch = p.step + 1, p.batch + 1
                p.elapsed = start_elapsed + time.perf_counter() - t0
                if loss is None:
                    p.skipped, p.bad_streak = p.skipped + 1, p.bad_streak + 1
                    if p.bad_streak >= c.bad_steps:
                        self.recover()
                        p = self.pos
                    continue
                p.bad_streak = 0
                self.loss_sum += loss
                p.acc_steps, p.acc_tokens = p.acc_steps + 1, p.acc_tokens + x.numel()
                p.acc_time += time.perf_counter() - ts
                row = None
                if p.step % c.log_every == 0:
                    mean = self.loss_sum.item() / p.acc_steps
                    row = {"step": p.step, "epoch": p.epoch, "elapsed_s": round(p.elapsed, 3), "train_loss": mean,
                           "train_bpc": mean / LN2 / self.chars_per_token, "tokens_per_s": round(p.acc_tokens / p.acc_time, 1),
                           "chars_per_s": round(p.acc_tokens * self.chars_per_token / p.acc_time, 1), "lr": lr}
                    if p.skipped:
                        row["skipped"] = p.skipped
                    self.loss_sum, p.acc_steps, p.acc_tokens, p.acc_time = torch.zeros((), device=self.dev), 0, 0, 0.0
                evaluated = self.progress() >= min(1.0, (p.evals_done + 1) / c.evals)
                if evaluated:
                    r = self.evaluate_now()
                    last_val = r["bpc"]
                    row = row or {"step": p.step, "epoch": p.epoch, "elapsed_s": round(p.elapsed, 3), "lr": lr}
                    row.update(val_fields(r))
                    p.elapsed = start_elapsed + time.perf_counter() - t0
                if row:
                    self.run.append_metrics(row)
                    shown = (("loss", row.get("train_loss")), ("val_bpc", last_val), ("chars/s", row.get("chars_per_s")))
                    bar.set_postfix({k: round(v, 3) for k, v in shown if v is not None}, refresh=False)
                    bar.n = p.step if (c.steps or c.epochs) else min(int(p.elapsed), bar_total)
                    bar.refresh()
                if c.patience and p.bad_evals >= c.patience:
                    break
                if self.checkpoint_due(evaluated) and self.progress() < 1.0:
                    self.checkpoint()
        finally:
            bar.close()
            for sig, h in handlers.items():
                signal.signal(sig, h)
        if self.stop_requested:
            p.stopped = "interrupted"
        else:
            p.stopped = "patience" if c.patience and p.bad_evals >= c.patience else "limit"
            if not p.history or p.history[-1][0] != p.step:
                r = self.evaluate_now()
                self.run.append_metrics({"step": p.step, "epoch": p.epoch, "elapsed_s": round(p.elapsed, 3), **val_fields(r)})
        self.checkpoint()
        return p
