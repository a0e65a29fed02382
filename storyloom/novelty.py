"""Is it writing or reciting? How much of a text is copied from the run's training text.

A suffix array of the training text, built once per run and kept in the run
directory (novelty.safetensors), answers for every position of a text the
longest span starting there that occurs verbatim in training. From those
matching lengths come the longest copied span and the share of novel n-grams.
Hand-written with numpy because no maintained Python library builds suffix
arrays over token arrays without a compiled extension.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .prepared import texts
from .errors import UserError
from .runs import Run

INDEX = "novelty.safetensors"
NS = (10, 20, 50)


def codepoints(text: str) -> np.ndarray:
    """Novelty is about characters at every level: the index holds code points, not token ids."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)


def suffix_array(s: np.ndarray) -> np.ndarray:
    """Suffix array by prefix doubling: O(n log n) numpy sorts, no Python loop over positions."""
    n = len(s)
    rank = np.unique(s, return_inverse=True)[1].astype(np.int64)
    k = 1
    while True:
        second = np.full(n, -1, dtype=np.int64)
        second[: n - k] = rank[k:]
        key = rank * (n + 1) + (second + 1)
        sa = np.argsort(key, kind="stable")
        ks = key[sa]
        new = np.empty(n, dtype=np.int64)
        new[sa] = np.concatenate([[0], np.cumsum(ks[1:] != ks[:-1])])
        rank = new
        if rank[sa[-1]] == n - 1 or k >= n:
            return sa.astype(np.int64)
        k *= 2


class Index:
    def __init__(self, text: np.ndarray, sa: np.ndarray, works: list[tuple[str, int]]):
        self.text, self.sa, self.works = text.astype(np.int64), sa, works  # works: (name, start offset)

    @classmethod
    def for_run(cls, run: Run) -> "Index":
        if run.has(INDEX):
            try:
                data = run.read(INDEX)
                head = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
                works = [tuple(w) for w in json.loads(head["__metadata__"]["works"])]
                t = st_load(data)
                return cls(t["text"].numpy(), t["sa"].numpy(), works)
            except (UserError, SafetensorError, KeyError, ValueError, TypeError):
                pass  # a damaged cache is rebuilt, never trusted
        cfg = run.config()
        try:  # config.json holds the split exactly as trained (the bundled corpus's benchmark split included)
            train = texts(cfg.sources, cfg.data, run.tokenizer(), "train")
        except UserError as e:
            raise UserError(f"{run.path}: {e}") from None
        ids = codepoints("".join(t for _, t in train))
        works, off = [], 0
        for name, t in train:
            works.append((name, off))
            off += len(t)
        sa = suffix_array(ids)
        idx = cls(ids, sa, works)
        run.put(INDEX, st_save({"text": torch.from_numpy(ids.astype(np.int64)), "sa": torch.from_numpy(sa)},
                               metadata={"works": json.dumps(works)}))
        return idx

    def where(self, pos: int) -> tuple[str, int]:
        starts = [w[1] for w in self.works]
        i = int(np.searchsorted(starts, pos, side="right")) - 1
        return self.works[i][0], pos - self.works[i][1]

    def matching_lengths(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each i, the longest prefix of q[i:] found in the text, and one training position where it starts."""
        q = q.astype(np.int64)
        m = len(q)
        lengths = np.zeros(m, dtype=np.int64)
        where = np.zeros(m, dtype=np.int64)
        todo = np.arange(m)
        K = 64
        while len(todo):
            L, W = self._match(q, todo, K)
            lengths[todo], where[todo] = L, W
            # a match as long as the window may go on: look again with a wider one
            full = (L == K) & (todo + K < m)
            todo, K = todo[full], K * 4
        return lengths, where

    def _match(self, q: np.ndarray, pos: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.text)
        ar = np.arange(K)
        Q = np.concatenate([q, np.full(K, -1)])[pos[:, None] + ar]  # (P, K); -1 pads the query's end
        tp = np.concatenate([self.text, np.full(K, -2)])  # -2 pads the text's end: never equal to -1

        def window(rows: np.ndarray) -> np.ndarray:
            return tp[self.sa[rows][:, None] + ar]  # (P, K)

        def compare(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            neq = Q != T
            first = np.where(neq.any(1), neq.argmax(1), K)  # length of the common prefix
            sign = np.zeros(len(Q), dtype=np.int64)
            has = first < K
            rows = np.nonzero(has)[0]
            sign[rows] = np.sign(Q[rows, first[rows]] - T[rows, first[rows]])
            # a query that ran out (-1) is a prefix, not a mismatch
            ended = has & (Q[np.arange(len(Q)), np.minimum(first, K - 1)] == -1)
            sign[ended] = -1
            return sign, first

        lo, hi = np.zeros(len(pos), dtype=np.int64), np.full(len(pos), n, dtype=np.int64)
        while (lo < hi).any():
            mid = (lo + hi) // 2
            active = lo < hi
            sign, _ = compare(window(np.minimum(mid, n - 1)))
            go_right = active & (sign > 0)
            lo = np.where(go_right, mid + 1, lo)
            hi = np.where(active & ~go_right, mid, hi)
        best_len = np.zeros(len(pos), dtype=np.int64)
        best_at = np.zeros(len(pos), dtype=np.int64)
        for nb in (lo - 1, lo):
            ok = (nb >= 0) & (nb < n)
            nbc = np.clip(nb, 0, n - 1)
            _, common = compare(window(nbc))
            common = np.where(ok, common, 0)
            better = common > best_len
            best_len = np.where(better, common, best_len)
            best_at = np.where(better, self.sa[nbc], best_at)
        return best_len, best_at


def report(index: Index, ids: np.ndarray, text: str) -> dict:
    lengths, where = index.matching_lengths(ids)
    m = len(ids)
    out: dict = {"chars": m}
    if m:
        i = int(lengths.argmax())
        work, offset = index.where(int(where[i]))
        L = int(lengths[i])
        out["longest_copied"] = L
        out["copied_text"] = text[i : i + L]
        out["copied_at"] = {"text_offset": i, "work": work, "work_offset": offset}
    else:
        out["longest_copied"] = 0
    for n in NS:
        starts = m - n + 1
        out[f"novel_{n}grams"] = float((lengths[:starts] < n).mean()) if starts > 0 else None
    return out
