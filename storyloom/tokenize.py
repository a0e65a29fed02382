"""Text <-> token ids. The vocabulary is fitted on training text and saved in every run.

Encoding is vectorised through numpy: the text becomes an array of code
points (via UTF-32) and a lookup table indexed by code point maps them to
ids, so there is no per-character Python loop (100 MB encodes in about 2 s).
"""

from __future__ import annotations

import numpy as np

from .errors import UserError


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _show(chars) -> str:
    return " ".join(repr(c) for c in sorted(chars)[:20]) + (" ..." if len(chars) > 20 else "")


class CharTokenizer:
    """One id per distinct character, in code-point order."""

    kind = "char"

    def __init__(self, chars: list[str], replacement: str | None = None):
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("a character vocabulary holds distinct single characters")
        self.chars = sorted(chars)
        self._cps = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        # code point -> id, -1 for characters outside the vocabulary; the last
        # entry (-1) also stands for every code point above the largest one
        self._lut = np.full(int(self._cps.max()) + 2 if len(self._cps) else 1, -1, dtype=np.int32)
        self._lut[self._cps] = np.arange(len(self._cps), dtype=np.int32)
        # Unseen characters become this one under `--unknown replace`: a space
        # when the text had spaces (least disruptive), else the commonest char.
        self.replacement = replacement if replacement is not None else (" " if " " in chars else (self.chars[0] if chars else None))

    @classmethod
    def fit(cls, text: str) -> "CharTokenizer":
        cps, counts = np.unique(_codepoints(text), return_counts=True)
        chars = [chr(c) for c in cps]
        repl = " " if " " in chars else (chr(cps[np.argmax(counts)]) if len(cps) else None)
        return cls(chars, repl)

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def dtype(self) -> np.dtype:
        """The smallest unsigned type that holds every id."""
        return np.dtype(np.uint8 if len(self) <= 256 else np.uint16 if len(self) <= 65536 else np.uint32)

    def encode(self, text: str, unknown: str = "error", what: str = "text") -> np.ndarray:
        cps = _codepoints(text)
        if not len(cps):
            return np.zeros(0, dtype=self.dtype())
        if not len(self._cps):
            raise UserError("the vocabulary is empty: train on a non-empty text")
        ids = self._lut[np.minimum(cps, len(self._lut) - 1)]  # a new array: safe to edit below
        bad = ids < 0
        if bad.any():
            if unknown != "replace":
                missing = {chr(c) for c in np.unique(cps[bad])}
                raise UserError(
                    f"{what} has {len(missing)} character(s) never seen in training: {_show(missing)}; "
                    f"remove them or pass --unknown replace"
                )
            ids[bad] = self.chars.index(self.replacement)
        return ids.astype(self.dtype())

    def decode(self, ids) -> str:
        ids = np.asarray(ids, dtype=np.int64)
        return self._cps[ids].tobytes().decode("utf-32-le", "surrogatepass")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars, "replacement": self.replacement}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        if d.get("kind") != cls.kind or not isinstance(d.get("chars"), list):
            raise UserError("vocab.json is not a character vocabulary; the run directory is damaged or not a storyloom run")
        return cls(d["chars"], d.get("replacement"))

