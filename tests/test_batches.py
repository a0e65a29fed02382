import numpy as np
import pytest

from storyloom.batches import Batches
from storyloom.errors import UserError


def test_streams_continue_and_targets_shift():
    ids = np.arange(1000) % 251
    b = Batches(ids.astype(np.uint8), batch_size=4, seq_len=10)
    L = (len(ids) - 1) // 4
    assert len(b) == L // 10
    for k in range(len(b) - 1):
        x0, y0 = b[k]
        x1, _ = b[k + 1]
        assert x0.shape == (4, 10)
        # every row of batch k+1 picks up where that row of batch k stopped
        assert (x1[:, 0] == y0[:, -1]).all()
        assert (y0[:, :-1] == x0[:, 1:]).all()
    # row r is the r-th contiguous slice of the text
    x, y = b[0]
    for r in range(4):
        assert x[r].tolist() == (ids[r * L : r * L + 10]).tolist()
        assert y[r].tolist() == (ids[r * L + 1 : r * L + 11]).tolist()


def test_every_position_is_a_target_once():
    ids = np.arange(401, dtype=np.int64)
    b = Batches(ids, batch_size=4, seq_len=10)
    seen = np.concatenate([b[k][1].numpy().ravel() for k in range(len(b))])
    assert sorted(seen.tolist()) == list(range(1, 401))


def test_too_short_text():
    # The same one-line error `storyloom train` gives (it was a bare ValueError here before the check had one home).
    with pytest.raises(UserError, match=r"40 tokens long, fewer than one batch needs \(4x10\+1 = 41\)"):
        Batches(np.arange(40), batch_size=4, seq_len=10)
    Batches(np.arange(41), batch_size=4, seq_len=10)
