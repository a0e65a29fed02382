"""Prepared corpora: sources cleaned, split and encoded once into raw id files, trained on through a memory map.

    train.bin, val.bin   ids in the smallest unsigned type the vocabulary fits
    vocab.json           the tokenizer
    prepared.json        lengths, the split, the data settings, the sources (written last: it says the rest is whole)
    manifest.json        SHA-256 and size of the three files above (files.py), checked on every load

At character level nothing is held whole: files are read twice (count the
characters, then encode), one at a time per worker process, each writing
its ids straight into its slice of train.bin and val.bin.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .config import DataConfig
from .corpus import Corpus, build, check_split, roles, split, split_one
from .errors import UserError
from .files import MANIFEST, dumps, entry, fsync_dir, parse_json, read_bytes, read_manifest, verify, write_atomic, write_json
from .sources import Document, load, read
from .tokenize import CharTokenizer, Tokenizer, char_counts, from_dict

PREPARED = "prepared.json"


def prepared_dir(sources) -> Path | None:
    """The directory if the sources are one directory made by `storyloom prepare`."""
    if len(sources) == 1 and (Path(sources[0]) / PREPARED).is_file():
        return Path(sources[0])
    return None


# What each worker process does with one source file. Module functions,
# so a process pool can send them by name.
def _job(job, cfg: DataConfig) -> tuple[Document, str, str]:
    doc = job if isinstance(job, Document) else load(job, cfg.encoding)
    return (doc, *split_one(doc, cfg))


def _count(args) -> tuple[str, int, int, np.ndarray, np.ndarray]:
    """Name, training and validation lengths, and the training part's characters (code points, counts)."""
    doc, train, val = _job(*args)
    counts = char_counts(train)
    cps = np.flatnonzero(counts)
    return doc.name, len(train), len(val), cps, counts[cps]


def _encode(args) -> None:
    """Encode one file and write its ids in place. At char level a file's offsets are known from the
    counting pass, so each worker writes its own slice and no ids travel back through a pipe."""
    job, cfg, tok, places = args
    _, train, val = _job(job, cfg)
    for (path, at, n), text, what in zip(places, (train, val), ("training", "validation")):
        ids = tok.ids(text, "error" if what == "training" else cfg.unknown, f"the {what} text")
        if len(ids) != n:
            raise UserError(f"{getattr(job, 'name', job)}: changed while it was being prepared; run `storyloom prepare` again")
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, memoryview(np.ascontiguousarray(ids, dtype=tok.dtype())), at * tok.dtype().itemsize)
        finally:
            os.close(fd)


def _size(job) -> int:
    return len(job.text) if isinstance(job, Document) else job.stat().st_size


def _parallel(fn, jobs: list, workers: int, bar: tqdm):
    """fn over jobs in order, in `workers` processes (in this one when 1), advancing the bar by each job's size."""
    sizes = [_size(j[0]) for j in jobs]
    pool = None
    if workers > 1 and len(jobs) > 1:
        # fork: workers start in milliseconds and inherit the imported modules; they touch no torch state.
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        pool = ctx.Pool(min(workers, len(jobs)))
    try:
        for n, r in zip(sizes, map(fn, jobs) if pool is None else pool.imap(fn, jobs)):
            bar.update(n)
            yield r
    finally:
        if pool is not None:
            pool.terminate()


def _prepare_chars(jobs: list, cfg: DataConfig, out: Path, workers: int, progress: bool) -> dict:
    """Character level in constant memory: one pass counts characters, a second encodes, file by file on `workers` processes."""
    total = sum(_size(j) for j in jobs)
    with tqdm(total=2 * total, unit="B", unit_scale=True, desc="prepare", disable=None if progress else True) as bar:
        names, chars, counts = [], [], np.zeros(256, dtype=np.int64)
        for name, nt, nv, cps, n in _parallel(_count, [(j, cfg) for j in jobs], workers, bar):
            names.append(name)
            chars.append((nt, nv))
            if len(cps) and cps[-1] >= len(counts):
                counts = np.pad(counts, (0, int(cps[-1]) + 1 - len(counts)))
            counts[cps] += n
        check_split(names, chars, cfg)
        tok = CharTokenizer.from_counts(counts)
        # Each file's slice of train.bin and val.bin: (path, offset in tokens, tokens).
        places = [[], []]
        for part, name in enumerate(("train.bin", "val.bin")):
            tmp, n = out / f".{name}.tmp", [c[part] for c in chars]
            with open(tmp, "wb") as f:
                f.truncate(sum(n) * tok.dtype().itemsize)
            places[part] = [(tmp, int(at), k) for at, k in zip(np.cumsum([0] + n[:-1]), n)]
        for _ in _parallel(_encode, [(j, cfg, tok, (t, v)) for j, t, v in zip(jobs, *places)], workers, bar):
            pass
        for part, name in enumerate(("train.bin", "val.bin")):
            tmp = places[part][0][0]
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, out / name)
        fsync_dir(out)
    train_chars, val_chars = (sum(c[part] for c in chars) for part in (0, 1))
    return {"tokenizer": tok, "train_tokens": train_chars, "val_tokens": val_chars, "train_chars": train_chars,
            "val_chars": val_chars - 1, "val_extra_nats": 0.0,  # every validation character after the first is scored
            "train_works": [n for n in names if roles(n, cfg)[0]], "val_works": [n for n in names if roles(n, cfg)[1]]}


def _prepare_in_memory(jobs: list, cfg: DataConfig, out: Path) -> dict:
    """Word and subword levels: their tokenizers are fitted on the whole training text at once."""
    c = build([j if isinstance(j, Document) else load(j, cfg.encoding) for j in jobs], cfg)
    for name, ids in (("train.bin", c.train), ("val.bin", c.val)):
        write_atomic(out / name, ids.astype(c.tokenizer.dtype(), copy=False).tobytes())
    return {"tokenizer": c.tokenizer, "train_tokens": int(len(c.train)), "val_tokens": int(len(c.val)),
            "train_chars": c.train_chars, "val_chars": c.val_chars, "val_extra_nats": c.val_extra_nats,
            "train_works": c.train_names, "val_works": c.val_names}


def prepare(jobs: list, cfg: DataConfig, out: str | Path, sources=(), workers: int = 0, progress: bool = True) -> dict:
    """Clean, split and encode once: train.bin and val.bin (raw ids in the smallest unsigned type), vocab.json, prepared.json.

    jobs are source files (as sources.locate gives them) or documents
    already read. workers: processes for character level (api.prepare passes one per physical core).
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / PREPARED).is_file():
        raise UserError(f"--out {out}: directory holds other files; choose a new --out")
    jobs = [Document("<stdin>", load(None, cfg.encoding).text) if j is None else j for j in jobs]  # stdin is read once
    out.mkdir(parents=True, exist_ok=True)
    (out / PREPARED).unlink(missing_ok=True)  # preparing again: the old marker must not vouch for half-written files
    if cfg.level == "char":
        r = _prepare_chars(jobs, cfg, out, max(workers, 1), progress)
    else:
        r = _prepare_in_memory(jobs, cfg, out)
    tok = r.pop("tokenizer")
    write_atomic(out / "vocab.json", dumps(tok.to_dict()))
    meta = {"dtype": tok.dtype().name, **r, "data": dataclasses.asdict(cfg), "sources": [str(s) for s in sources]}
    write_json(out / MANIFEST, {name: entry(path=out / name) for name in ("train.bin", "val.bin", "vocab.json")})
    write_json(out / PREPARED, meta)  # last: its presence says the rest is complete
    return meta


def load_prepared(path: str | Path) -> tuple[Corpus, DataConfig]:
    """A prepared corpus, its files verified against its manifest; the training ids stay on disk, memory-mapped.

    A corpus prepared before files carried a format (no manifest.json) is read unverified, as it was then.
    """
    path = Path(path)
    try:
        meta = parse_json(path / PREPARED, read_bytes(path / PREPARED))
        if meta.get("format", 0) >= 1:
            manifest = read_manifest(path / MANIFEST)
            for name in ("train.bin", "val.bin"):
                verify(path / name, None, manifest.get(name))
            vocab = parse_json(path / "vocab.json", verify(path / "vocab.json", read_bytes(path / "vocab.json"),
                                                             manifest.get("vocab.json")))
        else:
            vocab = json.loads((path / "vocab.json").read_text())
        tok = from_dict(vocab)
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


def texts(sources, cfg: DataConfig, tokenizer: Tokenizer, part: str) -> list[tuple[str, str]]:
    """The cleaned (name, text) pieces of a run's training or validation text (`part`), split exactly as it trained."""
    prep = prepared_dir(sources)
    if prep is not None:
        c, _ = load_prepared(prep)
        return [(f"{prep.name} (prepared)", tokenizer.decode(c.train if part == "train" else c.val))]
    if "-" in sources:
        raise UserError(f"trained from stdin, so its {'training' if part == 'train' else 'validation'} text is not on disk")
    train, val = split(read(list(sources), cfg.encoding), cfg)
    return train if part == "train" else val
