"""The language model: input encoding -> sequence cell (`--cell`, cells.py) -> linear head.

forward(x, state) -> (logits, state), where state is the cell's (for the LSTM,
(h, c)) and can be carried from one call to the next: two calls over T steps
equal one call over 2T.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cells import Folds, State, cached, make_cell
from .config import ModelConfig
from .runtime import autocast


# The native read's table of every token's input products holds V x 4H floats: 1 MB for the shipped base's 84
# characters, 245 MB for 20,000 words at 768. Past this size a prompt's own input products are computed instead.
READ_TABLE_BYTES = 32 << 20


class OneHot(nn.Module):
    """Seeds 000/001: a V-wide indicator vector per character."""

    def __init__(self, V: int):
        super().__init__()
        self.V = V

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(x, self.V).float()  # (B, T, V)


class Scalar(nn.Module):
    """Seed 003: the character's id scaled to [0, 1], one number per step."""

    def __init__(self, V: int):
        super().__init__()
        self.scale = 1.0 / max(V - 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() * self.scale).unsqueeze(-1)  # (B, T, 1)


def make_input(cfg: ModelConfig) -> nn.Module:
    return {
        "embedding": lambda: nn.Embedding(cfg.vocab_size, cfg.embed),
        "onehot": lambda: OneHot(cfg.vocab_size),
        "scalar": lambda: Scalar(cfg.vocab_size),
    }[cfg.input]()


class LanguageModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        V, H = cfg.vocab_size, cfg.hidden
        self.inp = make_input(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.cell = make_cell(cfg)
        self.folds = isinstance(self.cell, Folds)  # asked once: a protocol check costs microseconds, a step has few
        # Tying (Press & Wolf, 2017) makes the head reuse the embedding; a
        # projection maps H to the embedding width when the two differ.
        self.proj = nn.Linear(H, cfg.embed, bias=False) if cfg.tie and cfg.embed != H else None
        self.head = nn.Linear(cfg.embed if self.proj is not None else H, V)
        if cfg.tie:
            self.head.weight = self.inp.weight

    def initial_state(self, B: int, device=None) -> State:
        return self.cell.initial_state(B, device)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        e = self.drop(self.inp(x))  # (B, T, I)
        h, state = self.cell(e, state)  # (B, T, H)
        return self.out(self.drop(h)), state  # (B, T, V)

    def read(self, x: torch.Tensor, state: State | None, precision: str) -> tuple[torch.Tensor, State]:
        """forward() for reading a prompt, in eval mode: fp32, bf16 (autocast), or the cell's int8 weights
        (`cell.read`; the head stays fp32)."""
        with autocast(precision, x.device):
            h, state = self.cell.read(self.inp(x), state, precision, self._bounds())  # (B, T, H)
            return self.out(h), state  # (B, T, V)

    def _bounds(self) -> tuple[float, float]:
        """The least and greatest value the input encoding gives: an embedding's extremes, [0, 1] for the others."""
        if not isinstance(self.inp, nn.Embedding):
            return 0.0, 1.0
        W = self.inp.weight.detach()
        return cached(self, "_bounds_cache", lambda: (float(W.min()), float(W.max())))

    def out(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) from the top layer's output (..., H)."""
        return self.head(h if self.proj is None else self.proj(h))

    def _stepping(self) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """What a one-token step reads, cached until a parameter changes: the cell's first input projection of
        every token (V, 4H) when the input is a lookup the cell can fold (else None), and the head's weight
        (and the projection's) transposed to (in, out) and laid out so, with the head's bias: writing at batch 1
        ran about 5% faster so than through the head module (five alternated runs, benchmarks/README.md
        "Batch-1 writing"), one cached lookup a step and no module calls."""

        def build():
            lookup = self._lookup()
            table = self.cell.fold(lookup).detach() if lookup is not None and self.folds else None
            P = None if self.proj is None else self.proj.weight.detach().t().contiguous()  # (H, E)
            return table, self.head.weight.detach().t().contiguous(), self.head.bias.detach(), P  # W^T (H or E, V)

        return cached(self, "_step_cache", build)

    def _lookup(self) -> torch.Tensor | None:
        """The input encoding of every token (V, I) where it is a lookup (an embedding, a one-hot identity); else None."""
        lookup = {nn.Embedding: lambda: self.inp.weight, OneHot: lambda: torch.eye(self.cfg.vocab_size)}.get(type(self.inp))
        return None if lookup is None else lookup().detach()

    def native_weights(self) -> tuple | None:
        """(table, the cell's packed layers, projection W^T or None, head W^T, head bias) for the native writing
        loop (native.py), which steps a cell that folds a lookup input (cell.packed_layers); else None."""
        table, W, b, P = self._stepping()
        layers = self.cell.packed_layers() if table is not None else None
        return None if layers is None else (table, *layers, P, W, b)

    def native_read_weights(self) -> tuple | None:
        """(layer 0's int8 input products of every token (V, 4H), or None where the input is no lookup; W_ih packs,
        W_hh packs, the input's bounds) for native.py's int8 read of a prompt, which reads as `read` does
        (cell.read_packs, cell.read_inputs); else None. Cached until a parameter changes."""
        if not self.folds:
            return None

        def build():  # the lookup is made here, not at every read: a one-hot input's is a fresh V x V identity
            lookup = self._lookup()
            return None if lookup is None else self.cell.read_inputs(lookup, self._bounds())

        fits = self.cfg.vocab_size * 16 * self.cfg.hidden <= READ_TABLE_BYTES  # V rows of 4H floats
        return (cached(self, "_read_table", build) if fits else None, *self.cell.read_packs(), self._bounds())

    def step(self, x: torch.Tensor, state: State, precision: str = "fp32") -> tuple[torch.Tensor, State]:
        """forward() for one time step, x (B,) -> logits (B, V), in eval mode, without gradients. `precision`: how
        the cell's weights are held (one of cell.precisions; fp32 is exact)."""
        if torch.is_grad_enabled():  # entered only when needed: at batch 1 a context per step costs a few percent
            with torch.no_grad():
                return self.step(x, state, precision)
        table, W, b, P = self._stepping()
        if table is not None:
            # x's row holds W_ih x + b; index_select, not table[x]: 12 us in the writing loop against 15
            h, state = self.cell.step(None, state, z0=table.index_select(0, x), precision=precision)
        else:
            h, state = self.cell.step(self.inp(x[:, None])[:, 0], state, precision=precision)  # (B, H)
        # the head stays fp32: at (1 x 768) @ (768 x 84), 9 us against int8's 17 and bf16's 42
        return torch.addmm(b, h if P is None else h @ P, W), state  # (B, V)

    def steps(self, x: torch.Tensor, state: State | None, precision: str) -> tuple[torch.Tensor, State]:
        """forward() token by token through step(): x (B, T) -> logits (B, T, V); how a text is scored through
        the path that writes."""
        state = state if state is not None else self.initial_state(x.shape[0], x.device)
        out = []
        for t in range(x.shape[1]):
            logits, state = self.step(x[:, t], state, precision)
            out.append(logits)
        return torch.stack(out, 1), state


def layers(model: LanguageModel) -> list[dict]:
    """Each layer as the seeds' `model.summary()` showed it: name, kind, output shape (B and T left symbolic),
    parameters. The cell's parameters are grouped by the layer number in their names (l0, layers.1, ...)."""
    cfg = model.cfg
    width = {nn.Embedding: cfg.embed, OneHot: cfg.vocab_size, Scalar: 1}[type(model.inp)]
    rows = [{"layer": "input", "kind": type(model.inp).__name__, "output": f"(B, T, {width})",
             "params": sum(p.numel() for p in model.inp.parameters())}]
    groups: dict[int, int] = {}
    for name, p in model.cell.named_parameters():
        m = re.search(r"(?:_l|layers\.|\.)(\d+)", name)
        groups[int(m.group(1)) if m else 0] = groups.get(int(m.group(1)) if m else 0, 0) + p.numel()
    for i in sorted(groups):
        rows.append({"layer": f"{cfg.cell} {i + 1}", "kind": type(model.cell).__name__, "output": f"(B, T, {cfg.hidden})",
                     "params": groups[i]})
    if model.proj is not None:
        rows.append({"layer": "projection", "kind": "Linear", "output": f"(B, T, {cfg.embed})",
                     "params": model.proj.weight.numel()})
    tied = cfg.tie
    rows.append({"layer": "head", "kind": "Linear" + (" (tied to the input)" if tied else ""), "output": f"(B, T, {cfg.vocab_size})",
                 "params": model.head.bias.numel() if tied else sum(p.numel() for p in model.head.parameters())})
    return rows


def detach(state: State) -> State:
    return tuple(s.detach() for s in state)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flatten(model: nn.Module) -> nn.Module:
    """`model` with each cuDNN recurrent cell's weights back in one buffer. A deep copy (the weights' moving average,
    dynamic evaluation's copy) clones each weight on its own, and cuDNN then copies them into one buffer at every
    call, with a warning. A no-op on the CPU."""
    for m in model.modules():
        if isinstance(m, nn.RNNBase):
            m.flatten_parameters()
    return model
