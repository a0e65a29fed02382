"""The language model: input encoding -> stacked LSTM -> linear head.

forward(x, state) -> (logits, state), where state is the LSTM's (h, c) and
can be carried from one call to the next: two calls over T steps equal one
call over 2T.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig

State = tuple[torch.Tensor, torch.Tensor]  # h, c: each (layers, B, H)


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
        V, H, L = cfg.vocab_size, cfg.hidden, cfg.layers
        self.inp = make_input(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.rnn = nn.LSTM(cfg.input_size, H, L, batch_first=True, dropout=cfg.dropout if L > 1 else 0.0)
        # Tying (Press & Wolf, 2017) makes the head reuse the embedding; a
        # projection maps H to the embedding width when the two differ.
        self.proj = nn.Linear(H, cfg.embed, bias=False) if cfg.tie and cfg.embed != H else None
        self.head = nn.Linear(cfg.embed if self.proj is not None else H, V)
        if cfg.tie:
            self.head.weight = self.inp.weight
        with torch.no_grad():
            # PyTorch orders the gates i, f, g, o. A forget bias of 1 keeps the
            # cell state flowing early in training (Jozefowicz et al., 2015).
            for name, b in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    b[H : 2 * H].fill_(1.0)
                elif name.startswith("bias_hh"):
                    b[H : 2 * H].zero_()

    def initial_state(self, B: int, device=None) -> State:
        z = torch.zeros(self.cfg.layers, B, self.cfg.hidden, device=device)
        return z, z.clone()

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        e = self.drop(self.inp(x))  # (B, T, I)
        h, state = self.rnn(e, state)  # (B, T, H)
        return self.out(self.drop(h)), state  # (B, T, V)

    def out(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) from the top LSTM layer's output (..., H)."""
        return self.head(h if self.proj is None else self.proj(h))

    def _fused(self) -> tuple[torch.Tensor | None, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Weights laid out for step(), cached until any parameter changes.

        Per layer (W, b): [W_ih | W_hh]^T as (I+H, 4H) and b_ih + b_hh. When the
        input is a lookup (embedding, one-hot), layer 0's input projection and
        bias are folded into a (V, 4H) table, so its W is W_hh^T alone.
        """
        if not hasattr(self, "_plist"):
            self._plist = list(self.parameters())  # walking the module tree each step costs more than the step
        version = tuple((p._version, p.dtype, p.device) for p in self._plist)
        if getattr(self, "_fused_cache", (None,))[0] != version:
            rnn = self.rnn
            emb = {nn.Embedding: lambda: self.inp.weight, OneHot: lambda: torch.eye(self.cfg.vocab_size)}.get(type(self.inp))
            table, layers = None, []
            for l in range(self.cfg.layers):
                W_ih, W_hh = getattr(rnn, f"weight_ih_l{l}"), getattr(rnn, f"weight_hh_l{l}")
                b = getattr(rnn, f"bias_ih_l{l}") + getattr(rnn, f"bias_hh_l{l}")
                if l == 0 and emb is not None:
                    table = torch.addmm(b, emb().to(W_ih.dtype), W_ih.t()).detach()  # (V, 4H)
                    layers.append((W_hh.t().contiguous().detach(), b.detach()))
                else:
                    layers.append((torch.cat([W_ih, W_hh], 1).t().contiguous().detach(), b.detach()))
            self._fused_cache = (version, (table, layers))
        return self._fused_cache[1]

    @torch.no_grad()
    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """forward() for one time step, x (B,) -> logits (B, V), in eval mode.

        The LSTM equations written out over pre-fused weights: on a CPU,
        nn.LSTM's per-call setup costs far more than one step's arithmetic,
        and generation is one step per character.
        """
        h, c = state  # (L, B, H) each
        H = self.cfg.hidden
        table, layers = self._fused()
        inp = None if table is not None else self.inp(x[:, None])[:, 0]  # (B, I)
        hs, cs = [], []
        for l, (W, b) in enumerate(layers):
            if l == 0 and table is not None:
                z = torch.addmm(table[x], h[0], W)  # (B, 4H): x's row holds W_ih x + b
            else:
                z = torch.addmm(b, torch.cat([inp, h[l]], 1), W)  # (B, 4H)
            s = torch.sigmoid(z)  # i, f and o gates (the g slice is unused: one call beats three)
            g = torch.tanh(z[:, 2 * H : 3 * H])  # candidate C~_t
            c_l = torch.addcmul(s[:, H : 2 * H] * c[l], s[:, :H], g)  # C_t = f*C_{t-1} + i*C~_t
            inp = s[:, 3 * H :] * torch.tanh(c_l)  # h_t = o*tanh(C_t)
            hs.append(inp)
            cs.append(c_l)
        return self.out(inp), (torch.stack(hs), torch.stack(cs))


def detach(state: State) -> State:
    return tuple(s.detach() for s in state)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
