"""Choosing the next token from logits: pure functions of tensors, no text."""

from __future__ import annotations

import torch


def choose(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next ids (B,) from logits (B, V): argmax at temperature 0, else a draw."""
    if temperature == 0:
        return logits.argmax(-1)
    p = torch.softmax(logits.float() / temperature, dim=-1)  # (B, V)
    return torch.multinomial(p, 1, generator=generator).squeeze(-1)
