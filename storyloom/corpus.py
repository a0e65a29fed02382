"""Documents -> cleaned train and validation token arrays.

Validation text is whole named works (`--val-files`) or a contiguous share
at the end of each work (`--val-fraction`). Never random windows: windows
overlap their neighbours in the training text, so they leak.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from .clean import clean
from .config import DataConfig, override
from .errors import UserError
from .sources import BUNDLED, Document, is_bundled, read
from .tokenize import CharTokenizer, Tokenizer, char_counts, fit


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
    val_only: tuple[str, ...] = ()  # characters found only in the validation text, added to the vocabulary untrained


def split_one(doc: Document, cfg: DataConfig) -> tuple[str, str]:
    """One document, cleaned: (its training part, its validation part)."""
    return split_cleaned(doc.name, clean(doc.text, cfg.lowercase), cfg)


def split_cleaned(name: str, text: str, cfg: DataConfig) -> tuple[str, str]:
    """A cleaned text's (training part, validation part): all of it one or the other under --val-files, else its
    last --val-fraction for validation."""
    train, val = split_spans(name, [(0, len(text))], cfg)
    return "".join(text[a:b] for a, b in train), "".join(text[a:b] for a, b in val)


Spans = list[tuple[int, int]]


def split_spans(name: str, kept: Spans, cfg: DataConfig) -> tuple[Spans, Spans]:
    """The split of a cleaned text given as the stretches of another text it joins (clean.body_spans; split_cleaned
    gives a whole text as one): (the training part's stretches, the validation part's). Where the stretches index
    a text not yet lowercased, lowercasing must keep its length (ASCII does)."""
    if cfg.val_files:
        return ([], kept) if name in cfg.val_files else (kept, [])
    length = sum(b - a for a, b in kept)
    cut = length - int(round(length * cfg.val_fraction))
    train, val, at = [], [], 0
    for a, b in kept:  # cut the kept text `cut` characters in
        c = a + min(max(cut - at, 0), b - a)
        train += [(a, c)] if c > a else []
        val += [(c, b)] if b > c else []
        at += b - a
    return train, val


def check_split(names: list[str], chars: list[tuple[int, int]], cfg: DataConfig) -> None:
    """The errors a split can have, from each document's name and (training, validation) lengths."""
    if not any(t + v for t, v in chars):
        raise UserError(f"{', '.join(names[:3])}: no text left after cleaning; give a file with text in it")
    if cfg.val_files:
        missing = [v for v in cfg.val_files if v not in set(names)]
        if missing:
            raise UserError(f"--val-files {','.join(missing)}: no such work among the sources (they have: {', '.join(sorted(names)[:8])}...)")
        if all(n in cfg.val_files for n in names):
            raise UserError("--val-files names every work, leaving no training text; name fewer files")
    if not sum(t for t, _ in chars):
        raise UserError("the training text is empty after cleaning; give more text")
    if sum(v for _, v in chars) < 2:
        raise UserError("the validation text is empty; raise --val-fraction or give --val-files")


def roles(name: str, cfg: DataConfig) -> tuple[bool, bool]:
    """Whether a work gives training text, and whether it gives validation text (with --val-fraction, both)."""
    if not cfg.val_files:
        return True, True
    return name not in cfg.val_files, name in cfg.val_files


def benchmark_split(sources, cfg: DataConfig, given: dict) -> DataConfig:
    """The bundled corpus always trains on its fixed benchmark split unless told otherwise (`given`: the flags given)."""
    bundled = is_bundled(list(sources))
    if bundled and given.get("val_files") is None and given.get("val_fraction") is None:
        return override(cfg, val_files=BUNDLED[bundled])
    return cfg


def split(docs: list[Document], cfg: DataConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Cleaned (name, text) pairs for training and for validation."""
    parts = [(d.name, *split_one(d, cfg)) for d in docs]  # names may repeat (same file name in two folders)
    check_split([n for n, _, _ in parts], [(len(t), len(v)) for _, t, v in parts], cfg)
    return [(n, t) for n, t, _ in parts if roles(n, cfg)[0]], [(n, v) for n, _, v in parts if roles(n, cfg)[1]]


def clean_sources(sources=(), lowercase: bool = False, encoding: str = "utf-8") -> str:
    """What the model would see of these sources: cleaned and concatenated."""
    return "".join(clean(d.text, lowercase) for d in read(sources, encoding))


def with_val_only(tok: CharTokenizer, val_counts: np.ndarray) -> tuple[CharTokenizer, tuple[str, ...]]:
    """A fitted character vocabulary grown by the characters only the validation text has (val_counts: counts by
    code point), and those characters.

    A character that only the validation text has (a name, an accent, a stray symbol of one book) must not stop
    training: it joins the vocabulary, never a training target, so the model gives it the little probability an
    untrained output row gets, and the validation score pays for it honestly. (Other levels spell what they lack.)
    """
    known = set(tok.chars)
    val_only = tuple(ch for ch in map(chr, np.flatnonzero(val_counts)) if ch not in known)
    return (CharTokenizer(tok.chars + list(val_only), tok.replacement) if val_only else tok), val_only


def note_val_only(val_only) -> None:
    if val_only:
        shown = " ".join(repr(c) for c in val_only[:10]) + (" ..." if len(val_only) > 10 else "")
        print(f"storyloom: note: {len(val_only)} character(s) appear only in the validation text ({shown}): added to "
              "the vocabulary but never trained on, so validation scores them at the small probability an untrained "
              "character gets", file=sys.stderr)


def build(docs: list[Document], cfg: DataConfig, tokenizer: Tokenizer | None = None,
          grow: CharTokenizer | None = None) -> Corpus:
    """The corpus of `docs`, encoded by `tokenizer`, or by one fitted to the training text (at character level
    with the validation-only characters added). `grow` (fine-tuning a character model): that vocabulary, with the
    characters the fitted one has and it lacks added, sorted, and its replacement kept."""
    train, val = split(docs, cfg)
    train_text = "".join(t for _, t in train)
    val_text = "".join(t for _, t in val)
    tok = tokenizer or fit(train_text, cfg.level, cfg.vocab_size, cfg.max_vocab, cfg.min_count)
    val_only: tuple[str, ...] = ()
    if tokenizer is None and cfg.unknown == "error" and isinstance(tok, CharTokenizer):
        tok, val_only = with_val_only(tok, char_counts(val_text))
    if grow is not None:
        tok, val_only = CharTokenizer(sorted(set(grow.chars) | set(tok.chars)), grow.replacement), ()
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
        val_only=val_only,
    )
