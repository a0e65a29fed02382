"""Documents -> cleaned train and validation token arrays.

Validation text is whole named works (`--val-files`) or a contiguous share
at the end of each work (`--val-fraction`). Never random windows: windows
overlap their neighbours in the training text, so they leak.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .clean import clean
from .config import DataConfig
from .errors import UserError
from .sources import Document
from .tokenize import Tokenizer, fit, from_dict


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


# -- prepared corpora: encoded once, trained on through a memory map ----------
PREPARED = "prepared.json"


def prepared_dir(sources) -> Path | None:
    """The directory if the sources are one directory made by `storyloom prepare`."""
    if len(sources) == 1 and (Path(sources[0]) / PREPARED).is_file():
        return Path(sources[0])
    return None


def _write_array(path: Path, a: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        a.tofile(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def prepare(docs: list[Document], cfg: DataConfig, out: str | Path, sources=()) -> dict:
    """Clean, split and encode once: train.bin and val.bin (raw ids in the smallest unsigned type), vocab.json, prepared.json."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / PREPARED).is_file():
        raise UserError(f"--out {out}: directory holds other files; choose a new --out")
    c = build(docs, cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / PREPARED).unlink(missing_ok=True)  # preparing again: the old marker must not vouch for half-written files
    dtype = c.tokenizer.dtype()
    _write_array(out / "train.bin", c.train.astype(dtype, copy=False))  # ids come in this type already: no copy
    _write_array(out / "val.bin", c.val.astype(dtype, copy=False))
    (out / "vocab.json").write_text(json.dumps(c.tokenizer.to_dict()))
    meta = {"dtype": dtype.name, "train_tokens": int(len(c.train)), "val_tokens": int(len(c.val)),
            "train_chars": c.train_chars, "val_chars": c.val_chars, "val_extra_nats": c.val_extra_nats,
            "train_works": c.train_names, "val_works": c.val_names, "data": dataclasses.asdict(cfg),
            "sources": [str(s) for s in sources]}
    (out / PREPARED).write_text(json.dumps(meta, indent=1))  # last: its presence says the rest is complete
    return meta


def load_prepared(path: str | Path) -> tuple[Corpus, DataConfig]:
    """A prepared corpus; the training ids stay on disk, memory-mapped."""
    path = Path(path)
    try:
        meta = json.loads((path / PREPARED).read_text())
        tok = from_dict(json.loads((path / "vocab.json").read_text()))
        dtype = np.dtype(meta["dtype"])
        train = np.memmap(path / "train.bin", dtype=dtype, mode="r")
        val = np.fromfile(path / "val.bin", dtype=dtype)
        cfg = DataConfig(**meta["data"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: a damaged prepared corpus ({e}); run `storyloom prepare` again") from None
    if len(train) != meta["train_tokens"] or len(val) != meta["val_tokens"]:
        raise UserError(f"{path}: train.bin or val.bin has the wrong length; run `storyloom prepare` again")
    return Corpus(tok, train, val, meta["val_chars"], meta["val_extra_nats"], meta["train_chars"], meta["train_works"],
                  meta["val_works"]), cfg
