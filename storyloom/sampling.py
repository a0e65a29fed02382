"""Choosing the next token from logits: pure functions of tensors, no text.

Every function takes logits of shape (B, V) and returns a tensor of the same
shape or the chosen ids (B,). Filters compose in the order `shape_logits`
applies them: ban, repetition penalty, temperature, top-k, top-p.
"""

from __future__ import annotations

import torch

from .config import SampleConfig

NEG = float("-inf")


def ban(logits: torch.Tensor, banned) -> torch.Tensor:
    if not len(banned):
        return logits
    logits = logits.clone()
    logits[:, list(banned)] = NEG
    return logits


def repetition_penalty(logits: torch.Tensor, recent: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style: a token seen in `recent` (B, W) has a positive logit divided, a negative one multiplied."""
    if penalty == 1.0 or recent.numel() == 0:
        return logits
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, recent, True)  # (B, V)
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def top_k(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    if k is None or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, NEG)


def top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probabilities sum to at least p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs  # mass of the tokens ranked above each one
    drop_sorted = before >= p  # already reached p without this token
    drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
    return logits.masked_fill(drop, NEG)


def shape_logits(logits: torch.Tensor, cfg: SampleConfig, recent: torch.Tensor | None = None, banned=()) -> torch.Tensor:
    """Apply every filter in `cfg` except the draw itself, `banned` being ids never to emit; fp32 in and out."""
    logits = ban(logits.float(), banned)
    if recent is not None:
        logits = repetition_penalty(logits, recent, cfg.repetition_penalty)
    if cfg.temperature > 0 and cfg.temperature != 1.0:  # x / 1 is x: a division costs 5 us of a 200 us step
        logits = logits / cfg.temperature
    return top_p(top_k(logits, cfg.top_k), cfg.top_p)


def draw(logits: torch.Tensor, temperature: float, generators: list[torch.Generator]) -> torch.Tensor:
    """Next ids (B,): argmax at temperature 0, else one draw per row from that row's generator.

    A generator per row makes sample i of a batch depend only on its own seed.
    """
    if temperature == 0:
        return logits.argmax(-1)
    if len(generators) == 1:  # one row, in as few calls as it takes: a batch-1 step has 200 us for everything
        p = logits[0].softmax(-1)  # (V,)
        cdf = p.cumsum(-1)
        ids = torch.searchsorted(cdf, torch.rand(1, generator=generators[0]).mul_(cdf[-1]))  # (1,)
        # the float edge: u*total past the last kept token, or on a token of no probability (as the batch guards it)
        found = int(ids)
        i = min(found, logits.shape[-1] - 1)
        if p[i].item() == 0:
            i = int(logits[0].argmax())
        return ids if i == found else ids.fill_(i)
    probs = logits.softmax(-1)  # (B, V)
    u = torch.cat([torch.rand(1, generator=g) for g in generators])  # (B,)
    cdf = probs.cumsum(-1)
    ids = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
    ids = ids.clamp_max(logits.shape[-1] - 1)
    bad = probs.gather(1, ids[:, None]).squeeze(1) == 0
    if bad.any():
        ids[bad] = logits[bad].argmax(-1)
    return ids
