"""Token ids -> (x, y) batches for truncated backpropagation through time.

The text is cut into B contiguous streams; batch k holds steps
[kT, (k+1)T) of every stream, so batch k+1 continues batch k row by row and
the model's state can be carried across. Targets are inputs shifted by one,
so every position is a target.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import UserError


class Batches:
    """Batches cut on demand, so `ids` may be a memory-mapped file of any size: nothing is copied up front.

    `streams` picks the rows one data-parallel rank owns; the streams are
    always the global batch's, so every rank cuts the text the same way.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, streams: slice = slice(None)):
        self.ids, self.B, self.T = ids, batch_size, seq_len
        self.check(len(ids), batch_size, seq_len)
        self.L = (len(ids) - 1) // batch_size  # steps per stream
        self.n = self.L // seq_len  # batches per epoch
        self.starts = (np.arange(batch_size, dtype=np.int64)[:, None] * self.L)[streams]  # (b, 1): where each stream begins

    @staticmethod
    def check(n: int, batch_size: int, seq_len: int) -> None:
        """One batch needs B streams of T inputs and one more target: B*T+1 tokens at least."""
        need = batch_size * seq_len + 1
        if n < need:
            raise UserError(f"the training text is {n} tokens long, fewer than one batch needs ({batch_size}x{seq_len}+1 = "
                            f"{need}); give more text or lower --batch-size / --seq-len")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= k < self.n:
            raise IndexError(k)
        window = torch.from_numpy(self.ids[self.starts + k * self.T + np.arange(self.T + 1)].astype(np.int64))  # (b, T+1)
        return window[:, :-1], window[:, 1:]  # (b, T), (b, T)
