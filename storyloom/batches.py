"""Token ids -> (x, y) batches for truncated backpropagation through time.

The text is cut into B contiguous streams; batch k holds steps
[kT, (k+1)T) of every stream, so batch k+1 continues batch k row by row and
the model's state can be carried across. Targets are inputs shifted by one,
so every position is a target.
"""

from __future__ import annotations

import numpy as np
import torch


class Batches:
    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int):
        self.B, self.T = batch_size, seq_len
        self.L = (len(ids) - 1) // batch_size  # steps per stream
        self.n = self.L // seq_len  # batches per epoch
        if self.n < 1:
            need = batch_size * seq_len + 1
            raise ValueError(f"{len(ids)} tokens, fewer than the {need} one batch of {batch_size}x{seq_len} needs")
        span = self.B * self.L
        self.x = torch.from_numpy(np.ascontiguousarray(ids[:span]).reshape(self.B, self.L))  # (B, L)
        self.y = torch.from_numpy(np.ascontiguousarray(ids[1 : span + 1]).reshape(self.B, self.L))  # (B, L)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= k < self.n:
            raise IndexError(k)
        s = slice(k * self.T, (k + 1) * self.T)
        return self.x[:, s].long(), self.y[:, s].long()  # (B, T), (B, T)
