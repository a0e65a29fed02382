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
        self.head = nn.Linear(H, V)
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
        return self.head(self.drop(h)), state  # (B, T, V)


def detach(state: State) -> State:
    return tuple(s.detach() for s in state)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
