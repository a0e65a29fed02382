"""Training and evaluation.

fit() runs truncated BPTT: B contiguous streams, T steps a batch, the
state carried (detached) from batch to batch and reset at each epoch. AdamW
with linear warmup then cosine decay over the run's progress, gradient-norm
clipping, a moving average of the weights (what evaluations score and the
best weights keep), evaluation at equal steps of progress, early stopping,
and checkpoints that resume exactly. A step whose loss or gradient is not finite
is skipped; too many in a row restore the last checkpoint at a lower rate.

A Trainer writes into a store: a run directory (runs.Run), or `Memory`,
which keeps the rows, the best weights and the last checkpoint in memory.

Data-parallel (world.py): each rank trains its share of the B streams,
DistributedDataParallel averages the gradients, and every decision (the
step's loss, the clock, stopping, evaluations) is agreed by a collective, so
the ranks take the same steps as one process would; rank 0 writes the store.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from .batches import Batches
from .checkpoint import Position, TrainerState, Window, capture_rng, restore_rng
from .config import EVAL_SHARE, AdaptConfig, TrainConfig
from .corpus import Corpus
from .errors import UserError
from .kernels import lstm_kernel
from .model import LanguageModel, State, detach, flatten
from .runtime import autocast, pace, stop_signals
from .world import SOLO, World

LN2 = math.log(2)
MEMORISING = 0.3  # val bpc this far above train bpc (measured with dropout on, so the gap is real): memorising
MAX_RECOVERIES = 3  # then training stops: the learning rate is 1/8 of the asked one and it still diverges


@torch.no_grad()
def evaluate(model: LanguageModel, ids: np.ndarray, precision: str = "fp32", streams: int = 1, warmup: int = 512,
             chunk: int = 512, chars: int | None = None, extra_nats: float = 0.0, limit: int = 0,
             world: World = SOLO, stepped: str | None = None) -> dict:
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
    Over data-parallel ranks, each reads every world.size-th piece and the
    sums are added up: the figure one process gives. `stepped` (a decode
    precision) reads token by token through the step that writes, its
    weights held in that precision: the figure of the text as written.
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
    scored = int((y != -100).sum())
    mine = torch.arange(world.rank, S, world.size)  # this rank's pieces
    total = torch.zeros((), dtype=torch.float64)
    state = None
    for s in range(0, x.shape[1] if len(mine) else 0, chunk):
        xs, ys = x[mine, s : s + chunk].to(dev), y[mine, s : s + chunk].to(dev)
        pace()
        if stepped:
            logits, state = model.steps(xs, state, stepped)  # (S/world, T, V)
        else:
            with autocast(precision, dev):
                logits, state = model(xs, state)  # (S/world, T, V)
        total += F.cross_entropy(logits.float().flatten(0, 1), ys.flatten(), reduction="sum", ignore_index=-100).double().cpu()
    total = world.sum(total, "evaluating")
    model.train(was_training)
    chars = n if chars is None else chars
    if sampled:  # scale the text's characters and outside charges to the share scored
        chars, extra_nats = chars * scored / n, extra_nats * scored / n
    nats = (total.item() + extra_nats) / chars
    return {"bpc": nats / LN2, "nats_per_char": nats, "perplexity": math.exp(nats), "chars": chars,
            "token_perplexity": math.exp(total.item() / scored), "tokens": scored}


def adapt(model: LanguageModel, ids: np.ndarray, cfg: AdaptConfig, precision: str = "fp32") -> tuple:
    """Dynamic evaluation (Krause et al., 2018): read `ids` a segment at a time; score each segment, then take one
    gradient step on it, so every token is scored by a model that learned only from the text before it.

    Works on a copy: `model` (and the run on disk) never change. Returns (the adapted copy, the scored tokens'
    summed nats, their count, the state after the text, the logits (1, V) for the token after it).
    """
    m = flatten(copy.deepcopy(model))
    m.train()  # cuDNN's LSTM runs its backward only in training mode; every dropout is set to 0 instead
    for mod in m.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
        elif isinstance(getattr(mod, "dropout", None), float):
            mod.dropout = 0.0
    params = [p for p in m.parameters() if p.requires_grad]
    trained = [p.detach().clone() for p in params] if cfg.adapt_decay else None
    dev = next(m.parameters()).device
    x = torch.as_tensor(np.asarray(ids[:-1], dtype=np.int64), device=dev)[None]  # (1, n)
    y = torch.as_tensor(np.asarray(ids[1:], dtype=np.int64), device=dev)[None]
    total, state = 0.0, None
    with torch.enable_grad():
        for s in range(0, x.shape[1], cfg.segment):
            pace()
            with autocast(precision, dev):
                out, new = m(x[:, s : s + cfg.segment], state)  # (1, T, V)
            loss = F.cross_entropy(out[0].float(), y[0, s : s + cfg.segment], reduction="sum")
            total += float(loss.detach())
            m.zero_grad(set_to_none=True)
            (loss / out.shape[1]).backward()
            with torch.no_grad():
                for i, p in enumerate(params):
                    if p.grad is not None:
                        p -= cfg.adapt_lr * p.grad
                    if trained is not None:
                        p += cfg.adapt_decay * (trained[i] - p)
            state = detach(new)
    m.zero_grad(set_to_none=True)
    m.eval()
    # the text's last token was only ever a target: read it with the adapted weights, for the token after the text
    last = torch.as_tensor(np.asarray(ids[-1:], dtype=np.int64), device=dev)[None]  # (1, 1)
    with torch.no_grad(), autocast(precision, dev):
        out, after = m(last, state)
    return m, total, int(y.shape[1]), after, out[:, -1].float().cpu()


def val_fields(r: dict) -> dict:
    """An evaluation as metrics.jsonl records it."""
    return {"val_bpc": r["bpc"], "val_nats_per_char": r["nats_per_char"], "val_perplexity": r["perplexity"]}


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # Decay matrices only: decaying biases and the forget-gate bias init fights the init.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def averaging(share: float):
    """AveragedModel's in-place update for a moving average over about `share` of the steps so far: at the n-th
    update the average moves 1 / (1 + share n) of the way to the weights. Early on it follows them closely, later it
    spans a fixed share of the run, so one setting suits a run of any length (a fixed decay of 0.999 averages a
    200-step run over its starting weights). At 12,500 steps of the default preset, a share of 0.1 scored 0.012 bpc
    below the weights as trained (benchmarks/README.md, "A moving average of the weights")."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: int | torch.Tensor) -> None:
        torch._foreach_lerp_(averaged, current, 1.0 / (1.0 + share * int(n)))  # one fused kernel on a GPU

    return update


def update_average(average: AveragedModel, model: torch.nn.Module) -> None:
    """`average.update_parameters(model)` with the count read on the host, where AveragedModel keeps it. Torch's own
    moves the count to the GPU and regroups the tensors in Python at every step: on an H100 that cost the default
    preset 9-12% of its characters a second against no average; on a CPU a step is too long to show it."""
    n = int(average.n_averaged)
    with torch.no_grad():
        averaged, current = list(average.module.parameters()), list(model.parameters())
        if n == 0:
            torch._foreach_copy_(averaged, current)
        else:
            average.multi_avg_fn(averaged, current, n)
        for b, b_model in zip(average.module.buffers(), model.buffers()):
            b.copy_(b_model)  # buffers follow the model, as AveragedModel's do
    average.n_averaged += 1


def step_timer(model: LanguageModel, precision: str, B: int, T: int) -> Callable[[str], float]:
    """kernels.resolve_lstm_kernel's trial: seconds of one training step (forward, backward and AdamW's update)
    through an LSTM kernel, on random tokens at batch (B, T), on a copy of `model` made at the first call. The
    model and the random state are left as they were. The update is real because torch's kernel ran a step 10%
    faster on weights that stayed the same (30.8 against 34.9 ms on 2 Zen 5 cores in bf16; the loops 30.0
    against 31.6): a trial without it picked torch's kernel where whole runs trained 1.15-1.20x as fast through
    the loops."""
    ids = torch.randint(model.cfg.vocab_size, (2, B, T), generator=torch.Generator().manual_seed(0))
    twin: list = []  # (model, optimizer), made on the first call: most runs never time a kernel

    def trial(kernel: str) -> float:
        if not twin:
            copy_ = copy.deepcopy(model)
            twin.extend([copy_, torch.optim.AdamW(copy_.parameters(), lr=1e-4, fused=True)])
        m, opt = twin
        x, y = ids.to(next(m.parameters()).device)
        with torch.random.fork_rng(devices=[]):  # dropout's draws
            t = time.perf_counter()
            with autocast(precision, x.device), lstm_kernel(kernel):
                logits, _ = m(x)  # (B, T, V)
            F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).backward()
            opt.step()
            seconds = time.perf_counter() - t
        opt.zero_grad(set_to_none=True)
        return seconds

    return trial


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else 1.0
    cos = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


class Memory:
    """A store for a trainer without a run directory: metrics rows, best weights and the last checkpoint, in memory."""

    def __init__(self):
        self.rows: list[dict] = []
        self.best: dict[str, torch.Tensor] | None = None
        self.last: TrainerState | None = None
        self.path = "memory"

    def append_metrics(self, row: dict) -> None:
        self.rows.append(row)

    def metrics(self) -> list[dict]:
        return list(self.rows)

    def truncate_metrics(self, step: int) -> None:
        self.rows = [r for r in self.rows if r.get("step", 0) <= step]

    def save_weights(self, model: torch.nn.Module, which: str = "best") -> None:
        self.best = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def save_checkpoint(self, state: TrainerState, keep: int = 2) -> "Memory":
        self.last, self.step = copy.deepcopy(state), state.position.step
        return self

    def latest(self) -> "Memory":
        if self.last is None:
            raise UserError("no checkpoint yet")
        return self

    def state(self) -> TrainerState:
        return copy.deepcopy(self.last)


class Trainer:
    """Trains `model` on `corpus` into `store` (a run directory or Memory()).

    on_step, if given, is called with the trainer before every optimizer step
    (the batch already cut): a plain hook for tests and benchmarks, which may
    call request_stop(). `world`: the ranks training together (world.py).
    `kernel`: how an LSTM's recurrence trains, kernels.resolve_lstm_kernel's answer.
    """

    def __init__(self, model: LanguageModel, corpus: Corpus, cfg: TrainConfig, store=None, precision: str = "fp32",
                 on_step=None, world: World = SOLO, kernel: str = "torch"):
        self.model, self.cfg, self.precision, self.on_step, self.world = model, cfg, precision, on_step, world
        self.kernel = kernel
        self.store = store if store is not None else Memory()
        self.dev = next(model.parameters()).device
        self.streams = world.shard(cfg.batch_size)
        self.batches = Batches(corpus.train, cfg.batch_size, cfg.seq_len, self.streams)
        self.net = world.wrap(model)  # what a step calls: the model, or DDP around it
        # Which streams' state is zeroed (reset_prob) is drawn for the global batch from its own generator,
        # so every rank draws the same and a world of N resets the streams one process would.
        self.resets = torch.Generator().manual_seed(cfg.seed)
        self.corpus = corpus
        self.chars_per_token = corpus.train_chars / len(corpus.train)
        # fused: one kernel per parameter for the whole update; on this CPU it
        # made training 17% faster than the per-op loop (benchmarks/README.md).
        self.opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, 0.99), fused=True)
        # What is evaluated, kept as the best and written with: the weights' moving average (--average), or the
        # weights as trained. Checkpoints hold both, so a resumed run goes on exactly.
        self.average = AveragedModel(model, multi_avg_fn=averaging(cfg.average)) if cfg.average else None
        if self.average is not None:
            flatten(self.average.module)  # AveragedModel holds a deep copy
        self.scored = self.average.module if self.average is not None else model
        self.pos, self.window = Position(), Window()
        self.loss_sum = torch.zeros((), device=self.dev)  # summed where the loss is; read only when logging
        self.state: State | None = None  # this rank's streams'
        self.stop_requested = False  # asked here (a signal, request_stop)
        self.stop_agreed = False  # asked on some rank, as of the last tick
        self.last_train_bpc: float | None = None  # the last metrics row's
        self.warned = False  # memorising was said
        self.last_checkpoint = 0.0  # pos.elapsed at the last checkpoint

    def request_stop(self, *_) -> None:
        """Finish the current step, checkpoint and return (SIGINT and SIGTERM call this)."""
        self.stop_requested = True

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

    # -- the loop --------------------------------------------------------
    def fit(self, show_progress: bool = True) -> Position:
        """Train until a limit, early stopping or a stop request; checkpoint, and return where training is."""
        self.model.train()
        self.started, self.start_elapsed = time.perf_counter(), self.pos.elapsed
        self.last_checkpoint = self.pos.elapsed
        with self._bar(show_progress and self.world.main) as bar, stop_signals(self.request_stop):
            while self.progress() < 1.0 and not self.stopping():
                if self.pos.batch >= len(self.batches):
                    self.new_epoch()
                    continue
                x, y = self.next_batch()
                if self.on_step is not None:
                    self.on_step(self)
                lr, t = self.lr(), time.perf_counter()
                loss = self.step(x, y, lr)
                self.advance()
                if loss is None:
                    self.after_bad_step()
                    continue
                self.count(loss, x.numel(), time.perf_counter() - t)
                row = self.log_row(lr) if self.pos.step % self.cfg.log_every == 0 else None
                evaluated = self.evaluation_due()
                if evaluated:
                    before = self.pos.elapsed
                    row = {**(row or self.row(lr=lr)), **val_fields(self.evaluate_now())}
                    self.warn_if_memorising(row["val_bpc"])
                    self.tick()
                    self.pos.eval_s += self.pos.elapsed - before  # the agreed clock's: every rank decides alike
                if row and self.world.main:
                    self.store.append_metrics(row)
                    self._show(bar, row)
                if self.cfg.patience and self.pos.bad_evals >= self.cfg.patience:
                    break
                if self.checkpoint_due(evaluated) and self.progress() < 1.0:
                    self.checkpoint()
        self.finish()
        return self.pos

    def chars_per_s(self) -> float:
        """Characters trained a second over the whole run, its evaluations' time left out (0 before a step)."""
        p = self.pos
        seconds = p.elapsed - p.eval_s
        return p.step * self.cfg.batch_size * self.cfg.seq_len * self.chars_per_token / seconds if p.step and seconds > 0 else 0.0

    def stopping(self) -> bool:
        """Asked to stop: here, in one process; on any rank as of the last tick, in a world (so all stop together)."""
        return self.stop_agreed if self.world.joined else self.stop_requested

    def new_epoch(self) -> None:
        """The streams start again from the text's beginning, with a fresh state."""
        p = self.pos
        p.epoch, p.batch, self.state = p.epoch + 1, 0, None

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y), on the device."""
        x, y = self.batches[self.pos.batch]
        if self.dev.type == "cuda":  # a copy from page-locked memory can overlap the GPU's work
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(self.dev, non_blocking=True), y.to(self.dev, non_blocking=True)

    def lr(self) -> float:
        return lr_at(self.cfg, self.pos.step, self.progress()) * self.pos.lr_scale

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
            keep = (torch.rand(self.cfg.batch_size, generator=self.resets) >= self.cfg.reset_prob)[self.streams]  # (b,)
            state = tuple(s * keep.to(self.dev)[None, :, None].to(s.dtype) for s in state)
        with self.world.collective("averaging gradients"):
            with autocast(self.precision, self.dev), lstm_kernel(self.kernel):
                logits, state = self.net(x, state)  # (b, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            self.opt.zero_grad(set_to_none=True)
            loss.backward()  # in a world, DDP has averaged the gradients when this returns
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])  # the global batch's gradient: the same on every rank
        loss = self.world.mean_(loss.detach().clone())  # the global batch's loss: every rank skips the same steps
        if not bool(torch.isfinite(loss + norm)):
            self.opt.zero_grad(set_to_none=True)
            return None
        # Clipping multiplies every gradient by clip / (norm + 1e-6), at most 1; only a run's first steps go over the
        # limit (16 of a 1,500-step run of the default), and multiplying by 1 took 0.8 ms of a 35 ms step in a profile
        # (bf16, 2 Zen 5 cores). The coefficient is worked out as torch works it out: what is skipped is a product by 1.
        if self.cfg.clip and float(self.cfg.clip / (norm + 1e-6)) < 1.0:
            torch.nn.utils.clip_grads_with_norm_(params, self.cfg.clip, norm)
        self.opt.step()
        if self.average is not None:
            update_average(self.average, self.model)
        self.state = detach(state)
        return loss

    def advance(self) -> None:
        """After a step, taken or skipped: count it, bring the clock up to date, fit the threads to the free cores."""
        p = self.pos
        p.step, p.batch = p.step + 1, p.batch + 1
        self.tick()
        pace()

    def tick(self) -> None:
        """Bring the clock up to date: rank 0's, in a world, and learn whether any rank was asked to stop."""
        here = self.start_elapsed + time.perf_counter() - self.started
        self.pos.elapsed, self.stop_agreed = self.world.clock(here, self.stop_requested)

    def after_bad_step(self) -> None:
        p = self.pos
        p.skipped, p.bad_streak = p.skipped + 1, p.bad_streak + 1
        if p.bad_streak >= self.cfg.bad_steps:
            self.recover()

    def count(self, loss: torch.Tensor, tokens: int, seconds: float) -> None:
        self.pos.bad_streak = 0
        self.loss_sum += loss
        w = self.window
        w.steps, w.tokens, w.seconds = w.steps + 1, w.tokens + tokens * self.world.size, w.seconds + seconds

    # -- metrics rows ------------------------------------------------------
    def row(self, **fields) -> dict:
        """A metrics.jsonl row: where training is, and `fields`."""
        p = self.pos
        return {"step": p.step, "epoch": p.epoch, "elapsed_s": round(p.elapsed, 3), **fields}

    def log_row(self, lr: float) -> dict:
        """The training figures of the steps since the last row, which starts a new window."""
        w = self.window
        mean = self.loss_sum.item() / w.steps
        row = self.row(train_loss=mean, train_bpc=mean / LN2 / self.chars_per_token, tokens_per_s=round(w.tokens / w.seconds, 1),
                       chars_per_s=round(w.tokens * self.chars_per_token / w.seconds, 1), lr=lr)
        if self.pos.skipped:
            row["skipped"] = self.pos.skipped
        self.last_train_bpc = row["train_bpc"]
        self.loss_sum, self.window = torch.zeros((), device=self.dev), Window()
        return row

    def warn_if_memorising(self, val_bpc: float) -> None:
        """Say once, on stderr, when the training text is scored far better than the validation text."""
        train_bpc = self.last_train_bpc
        # In the first pass every batch's loss comes before any step on it, so the gap there is not memorising: it is
        # how the validation works differ, or (with --average) the average's lag early on, which said "memorising" at
        # step 109 of `make demo` on 2 AMD Zen 3 cores (train 3.086, val 3.717).
        if train_bpc is None or self.warned or not self.world.main or self.pos.epoch == 0:
            return
        if val_bpc - train_bpc > MEMORISING:
            self.warned = True
            tqdm.write(f"storyloom: note: at step {self.pos.step} training scores {train_bpc:.3f} bpc but validation "
                       f"{val_bpc:.3f}: the model is memorising its training text; starting from a model that already reads "
                       "(--init shakespeare, or --init RUN), more --dropout, more text or a shorter run would generalise "
                       "better (the best weights are kept by validation bpc either way)",
                       file=sys.stderr)

    def _show(self, bar, row: dict) -> None:
        c, p = self.cfg, self.pos
        last_val = p.history[-1][2] if p.history else None
        shown = (("loss", row.get("train_loss")), ("val_bpc", last_val), ("chars/s", row.get("chars_per_s")))
        bar.set_postfix({k: round(v, 3) for k, v in shown if v is not None}, refresh=False)
        bar.n = p.step if (c.steps or c.epochs) else min(int(p.elapsed), bar.total)
        bar.refresh()

    @contextmanager
    def _bar(self, show: bool):
        c = self.cfg
        total = c.steps or (int(c.epochs * len(self.batches)) if c.epochs else int(c.minutes * 60))
        bar = tqdm(total=total, initial=0, unit="step" if (c.steps or c.epochs) else "s", disable=None if show else True,
                   dynamic_ncols=True)
        try:
            yield bar
        finally:
            bar.close()

    # -- evaluation --------------------------------------------------------
    def evaluation_due(self) -> bool:
        """At each of --evals evenly spaced points; with a time limit, only while evaluating has taken at most
        EVAL_SHARE of the time (the points missed are dropped, not made up)."""
        c, p = self.cfg, self.pos
        if self.progress() < min(1.0, (p.evals_done + 1) / c.evals):
            return False
        return not c.minutes or p.eval_s <= EVAL_SHARE * p.elapsed

    def validate(self, model: LanguageModel) -> dict:
        """`model`'s validation score, read as every evaluation during training reads it."""
        c = self.corpus
        return evaluate(model, c.val, self.precision, streams=16, chars=c.val_chars, extra_nats=c.val_extra_nats,
                        limit=self.cfg.eval_tokens, world=self.world)

    def evaluate_now(self) -> dict:
        """Validation bpc now (of the average, with --average); keeps those weights as the best when they are the
        best yet."""
        r = self.validate(self.scored)
        p = self.pos
        p.evals_done = max(p.evals_done + 1, min(int(self.progress() * self.cfg.evals), self.cfg.evals))
        p.history.append((p.step, round(p.elapsed, 3), r["bpc"]))
        if r["bpc"] < p.best_bpc:
            p.best_bpc, p.bad_evals = r["bpc"], 0
            if self.world.main:
                self.store.save_weights(self.scored, "best")
        else:
            p.bad_evals += 1
        return r

    def finish(self) -> None:
        """Why training ended; a last evaluation if the last step had none; a checkpoint."""
        p = self.pos
        if self.stopping():
            p.stopped = "interrupted"
        else:
            p.stopped = "patience" if self.cfg.patience and p.bad_evals >= self.cfg.patience else "limit"
            if not p.history or p.history[-1][0] != p.step:
                row = self.row(**val_fields(self.evaluate_now()))
                if self.world.main:
                    self.store.append_metrics(row)
        self.checkpoint()

    # -- checkpoints -----------------------------------------------------
    def checkpoint_due(self, evaluated: bool) -> bool:
        c = self.cfg
        return (evaluated or bool(c.checkpoint_every and self.pos.step % c.checkpoint_every == 0)
                or bool(c.checkpoint_minutes and self.pos.elapsed - self.last_checkpoint >= 60 * c.checkpoint_minutes))

    def checkpoint(self) -> None:
        """Every rank gives its streams' state and its generators; rank 0 writes them as one process's checkpoint."""
        self.window.loss = float(self.loss_sum)
        w = self.world
        carried = None if self.state is None else tuple(torch.cat(w.gather(s), dim=1) for s in self.state)  # (L, B, H)
        gpu = [self.dev.index or 0] if self.dev.type == "cuda" and w.joined else None
        rng = capture_rng(gpu)
        rng[0]["rng.resets"] = self.resets.get_state()
        ranks = {}
        if w.joined:
            mine = {"torch": torch.get_rng_state()}
            if self.dev.type == "cuda":
                mine["cuda"] = torch.cuda.get_rng_state(self.dev)
            every = {k: w.gather(v) for k, v in mine.items()}
            ranks = {r: {k: every[k][r] for k in every} for r in range(1, w.size)}
        if w.main:
            average = None if self.average is None else self.average.state_dict()
            st = TrainerState(self.pos, self.window, self.model.state_dict(), self.opt.state_dict(), carried, rng, w.size, ranks,
                              average)
            self.store.save_checkpoint(st, self.cfg.keep)
        self.last_checkpoint = self.pos.elapsed

    def restore(self) -> None:
        """Continue exactly from the store's newest checkpoint."""
        st = self.store.latest().state()
        self.model.load_state_dict(st.model)
        self.opt.load_state_dict(st.optimizer)
        if self.average is not None:
            if st.average is not None:
                self.average.load_state_dict(st.average)
            else:  # a checkpoint of a run without an average (or from before --average): it starts here
                self.average.module.load_state_dict(st.model)
                self.average.n_averaged.zero_()  # so the next update copies the weights, as the first one does
        restore_rng(*st.rng)
        self.pos, self.window = st.position, st.window
        if "rng.resets" in st.rng[0]:
            self.resets.set_state(st.rng[0]["rng.resets"])
        else:  # a checkpoint from before the resets had their own generator
            self.resets.manual_seed(self.cfg.seed + self.pos.step)
        w = self.world
        self.resumed_from = st.world  # ranks that wrote the checkpoint
        if w.rank:
            mine = st.ranks.get(w.rank) if st.world == w.size else None
            if mine:
                torch.set_rng_state(mine["torch"])
                if "cuda" in mine and self.dev.type == "cuda":
                    torch.cuda.set_rng_state(mine["cuda"], self.dev)
            else:  # resumed on another world size: the streams re-shard exactly; dropout draws anew
                torch.manual_seed(self.cfg.seed + 7919 * w.rank + self.pos.step)
        self.loss_sum = torch.tensor(self.window.loss, device=self.dev)
        self.state = tuple(s[:, self.streams].to(self.dev) for s in st.carried) if st.carried else None
        if w.main:
            self.store.truncate_metrics(self.pos.step)

    def recover(self) -> None:
        """After bad_steps non-finite steps in a row: back to the last checkpoint, at half the learning rate."""
        now = self.pos
        if now.recoveries >= MAX_RECOVERIES:
            at = self.store.latest()
            raise UserError(f"training diverged: {now.bad_streak} non-finite steps in a row after {now.recoveries} restores "
                            f"at ever lower learning rates; the last good checkpoint (step {at.step}) is kept in "
                            f"{self.store.path}; retrain with a lower --lr or a smaller --clip")
        self.restore()
        # Time, faults and recoveries are the run's history, not the checkpoint's.
        self.pos.elapsed, self.pos.eval_s, self.pos.skipped = now.elapsed, now.eval_s, now.skipped
        self.pos.recoveries, self.pos.lr_scale, self.pos.bad_streak = now.recoveries + 1, now.lr_scale / 2, 0
        if self.world.main:
            self.store.append_metrics(self.row(event="restored after non-finite steps", skipped=now.skipped,
                                               lr_scale=self.pos.lr_scale))
