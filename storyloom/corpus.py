"""Documents -> cleaned train and validation token arrays.

Validation text is whole named works (`--val-files`) or a contiguous share
at the end of each work (`--val-fraction`). Never random windows: windows
overlap their neighbours in the training text, so they leak.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .clean import clean
from .config import DataConfig
from .errors import UserError
from .sources import Document
from .tokenize import Tokenizer, fit


@dataclass
class Corpus:
    tokenizer: Tokenizer
    train: np.ndarray  # token ids of the training text, works concatenated
    val: np.ndarray  # token ids of the validation text, read as one stream
    val_chars: int  # characters of the validation text that are scored (bpc divides by this)
    val_extra_nats: float  # nats charged outside the model (word level: spelling out <unk>)
    train_chars: int  # characters of the training text (chars/s = tokens/s * train_chars / len(train))
    train_names: list[str]
    val_names: list[str]


def split(docs: list[Document], cfg: DataConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Cleaned (name, text) pairs for training and for validation."""
    texts = [(d.name, clean(d.text, cfg.lowercase)) for d in docs]
    if not any(t for _, t in texts):
        raise UserError(f"{', '.join(n for n, _ in texts[:3])}: no text left after cleaning; give a file with text in it")
    if cfg.val_files:
        names = {n for n, _ in texts}
        missing = [v for v in cfg.val_files if v not in names]
        if missing:
            raise UserError(f"--val-files {','.join(missing)}: no such work among the sources (they have: {', '.join(sorted(names)[:8])}...)")
        train = [(n, t) for n, t in texts if n not in cfg.val_files]
        val = [(n, t) for n, t in texts if n in cfg.val_files]
        if not train:
            raise UserError("--val-files names every work, leaving no training text; name fewer files")
        return train, val
    train, val = [], []
    for n, t in texts:
        cut = len(t) - int(round(len(t) * cfg.val_fraction))
        train.append((n, t[:cut]))
        val.append((n, t[cut:]))
    return train, val


def build(docs: list[Document], cfg: DataConfig, tokenizer: Tokenizer | None = None) -> Corpus:
    train, val = split(docs, cfg)
    train_text = "".join(t for _, t in train)
    val_text = "".join(t for _, t in val)
    if not train_text:
        raise UserError("the training text is empty after cleaning; give more text")
    if len(val_text) < 2:
        raise UserError("the validation text is empty; raise --val-fraction or give --val-files")
    tok = tokenizer or fit(train_text, cfg.level, cfg.vocab_size, cfg.max_vocab, cfg.min_count)
    # Resuming keeps the run's tokenizer; at word level words the vocabulary dropped are <unk> in training too.
    train_ids = tok.ids(train_text, "replace" if tok.charges_unknown else "error", "the training text")
    scored = tok.scored(val_text, cfg.unknown, "the validation text")
    return Corpus(
        tokenizer=tok,
        train=train_ids,
        val=scored.ids,
        val_chars=scored.chars,
        val_extra_nats=scored.extra_nats,
        train_chars=len(train_text),
        train_names=[n for n, _ in train],
        val_names=[n for n, _ in val],
    )
