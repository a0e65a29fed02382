"""Prepared corpora: sources cleaned, split and encoded once into raw id files, trained on through a memory map.

    train.bin, val.bin   ids in the smallest unsigned type the vocabulary fits
    vocab.json           the tokenizer
    prepared.json        lengths, the split, the data settings, the sources (written last: it says the rest is whole)
    manifest.json        SHA-256 and size of the three files above (files.py), checked on every load

Nothing is held whole. A file larger than PIECE_BYTES is read in pieces
split after a newline: a first pass finds where its Gutenberg boilerplate
ends and its validation tail begins (clean.py's rules, applied across
pieces), and the pieces give exactly the ids the whole file would. At
character level files and pieces are then read twice (count the characters,
then encode), one at a time per worker process, each writing its ids
straight into its slice of train.bin and val.bin, which this process
hashes and writes back to disk as they fill (files.Filled). A file read
whole is cleaned once: its counting pass says where its training and
validation parts lie in its text, and the encoding pass slices them out,
as it does a piece's. At word and BPE level they
are read twice in order, a file or piece at a time (fit the tokenizer, then
encode), and encoded in texts cut where every level's tokens break
(tokenize.Rejoin), so the ids are those of the whole text: word level counts
and encodes each file's or piece's text between its first and last such cut
in worker processes, joining the edges here; BPE's encoder uses every core
itself.
"""

from __future__ import annotations

import codecs
import ctypes
import dataclasses
import json
import multiprocessing
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import presets
from .clean import body_spans, body_start, end_lines, kept, normalize, opening_is_whole, start_lines, strip_gutenberg
from .config import DataConfig
from .corpus import (Corpus, benchmark_split, check_split, note_val_only, roles, split, split_cleaned, split_one, split_spans,
                     with_val_only)
from .cpu import physical_cores
from .errors import UserError
from .files import MANIFEST, Filled, dumps, entry, fsync_dir, parse_json, read_bytes, read_manifest, verify, write_atomic, write_json
from .sources import Document, decode, load, locate, read
from .tokenize import CUT, CharTokenizer, Rejoin, Tokenizer, WordTokenizer, char_counts, cut, fit_pieces, from_dict

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


def _count(args) -> tuple:
    """Pass 1 for a whole file: its name, normalised length and split, with the training part's characters (code
    points, counts) and the validation part's code points. The split is where the parts lie in the normalised text
    (train and val stretches), so that the encoding pass slices them out rather than cleaning the text again; or,
    where lowercasing outside ASCII may change lengths, None and the parts' lengths."""
    job, cfg = args
    text = _text(job, cfg)
    if cfg.lowercase and not text.isascii():
        train, val = split_cleaned(job.name, strip_gutenberg(text).lower(), cfg)
        counts = char_counts(train)
        cps = np.flatnonzero(counts)
        return job.name, len(text), None, (len(train), len(val)), cps, counts[cps], np.flatnonzero(char_counts(val))
    spans = split_spans(job.name, body_spans(text), cfg)
    train, val = (_part_counts(text, 0, r, cfg.lowercase) for r in spans)
    cps = np.flatnonzero(train)
    lengths = tuple(sum(b - a for a, b in r) for r in spans)
    return job.name, len(text), spans, lengths, cps, train[cps], np.flatnonzero(val)


def _encode(args) -> None:
    """Encode one file read whole and write its ids in place: a file whose parts lowercasing may resize, so that
    they are known only as texts (_count). Its offsets are known from the counting pass, so each worker writes its
    own slice and no ids travel back through a pipe."""
    job, cfg, tok, places = args
    _, train, val = _job(job, cfg)
    for (path, at, n), text, what in zip(places, (train, val), ("training", "validation")):
        ids = tok.ids(text, "error" if what == "training" else cfg.unknown, f"the {what} text")
        if len(ids) != n:
            raise UserError(f"{getattr(job, 'name', job)}: changed while it was being prepared; run `storyloom prepare` again")
        _write_ids(path, at, ids, tok)


PIECE_BYTES = 16 << 20  # a file larger than this is prepared in pieces (each worker holds one at a time)
SPLITTABLE = {"utf-8", "ascii", "iso8859-1", "cp1252"}  # encodings where byte 0x0A is a newline and only ever one


@dataclass(frozen=True)
class Piece:
    """Bytes [start, end) of a large file, ending just after a newline (the last at the file's end)."""

    path: Path
    index: int
    start: int
    end: int


def pieces(path: Path, size: int) -> list[Piece]:
    n, out, a = path.stat().st_size, [], 0
    with open(path, "rb") as f:
        while a < n:
            b = min(a + size, n)
            f.seek(b)
            while b < n:  # on to the end of the line
                block = f.read(1 << 16)
                nl = block.find(b"\n")
                b = min(n, b + (nl + 1 if nl >= 0 else len(block)))
                if nl >= 0 or not block:
                    break
            out.append(Piece(path, len(out), a, b))
            a = b
    return out


def splittable(job, cfg: DataConfig, size: int) -> bool:
    """Whether a job is a large plain file in an encoding that can be cut at its newline bytes."""
    if not isinstance(job, Path) or job.suffix == ".gz" or job.stat().st_size <= size:
        return False
    try:
        return codecs.lookup(cfg.encoding).name in SPLITTABLE
    except LookupError:
        return False


def _piece_text(p: Piece, cfg: DataConfig) -> str:
    """A piece of a file decoded and normalised: exactly that stretch of the whole file's normalised text
    (NFC and newlines never reach across a newline; only the first piece can open with a BOM)."""
    with open(p.path, "rb") as f:
        f.seek(p.start)
        data = f.read(p.end - p.start)
    return normalize(decode(data, str(p.path), cfg.encoding, offset=p.start), first=p.index == 0)


def _text(job, cfg: DataConfig) -> str:
    """What a job's ranges index: a piece's stretch of its file's normalised text, or a whole file's or document's."""
    if isinstance(job, Piece):
        return _piece_text(job, cfg)
    return normalize((job if isinstance(job, Document) else load(job, cfg.encoding)).text)


def _scan(args) -> tuple[int, bool, list[tuple[int, int]], list[int], tuple[np.ndarray, np.ndarray]]:
    """Pass 1 for a piece: its normalised length, whether it is ASCII, its start-marker and end-marker lines,
    and all its characters (code points, counts; lowered as the run will see them, where that keeps lengths)."""
    p, cfg = args
    text = _piece_text(p, cfg)
    counts = char_counts(text.lower() if cfg.lowercase and text.isascii() else text)
    cps = np.flatnonzero(counts)
    return len(text), text.isascii(), start_lines(text), end_lines(text), (cps, counts[cps])


def _opening(ps: list[Piece], offsets: list[int], start: int, end: int, cfg: DataConfig) -> str:
    """The body's text from `start`, as far as credit_span needs it."""
    text = ""
    for p, o, o2 in zip(ps, offsets, offsets[1:]):
        if o2 <= start:
            continue
        if o >= end:
            break
        text += _piece_text(p, cfg)[max(start - o, 0) : end - o]
        if opening_is_whole(text):
            break
    return text


def layout(name: str, ps: list[Piece], scans: list, cfg: DataConfig):
    """A large file's training and validation parts as [start, end) ranges of its normalised text, split as
    split_one splits the whole text; None when it must be read whole (lowercasing outside ASCII may change lengths)."""
    if cfg.lowercase and not all(s[1] for s in scans):
        return None
    offsets = np.cumsum([0] + [s[0] for s in scans]).tolist()
    n = offsets[-1]
    start = body_start([(o + a, o + b) for o, s in zip(offsets, scans) for a, b in s[2]], n)
    end = min([o + e for o, s in zip(offsets, scans) for e in s[3] if o + e >= start], default=n)
    return split_spans(name, kept(start, end, _opening(ps, offsets, start, end, cfg) if start else ""), cfg)


def _stretches(text: str, offset: int, ranges: list[tuple[int, int]], lowercase: bool):
    """(position in the part the ranges make up, text) of each range's stretch inside this piece."""
    at = 0
    for a, b in ranges:
        lo, hi = max(a, offset), min(b, offset + len(text))
        if lo < hi:
            t = text[lo - offset : hi - offset]
            yield at + lo - a, (t.lower() if lowercase else t)
        at += b - a


def _covered(ranges: list[tuple[int, int]], end: int) -> int:
    """How much of the part that sorted, disjoint ranges make up lies before position `end`."""
    return sum(min(b, end) - a for a, b in ranges if a < end)


def _outside(ranges: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """The stretches of [0, n) that sorted, disjoint ranges leave out."""
    edges = [0] + [x for r in ranges for x in r] + [n]
    return [(a, b) for a, b in zip(edges[::2], edges[1::2]) if b > a]


def _add(counts: np.ndarray, cps: np.ndarray, n: np.ndarray, sign: int = 1) -> np.ndarray:
    """counts[cp] += sign * n for each code point, counts grown to hold the largest."""
    if len(cps) and cps[-1] >= len(counts):
        counts = np.pad(counts, (0, int(cps[-1]) + 1 - len(counts)))
    counts[cps] += sign * n
    return counts


def _count_piece(args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pass 2 for a piece: the characters (code points, counts) of its share of what the training part leaves
    out (pass 1 counted whole pieces, and the header, footer and tail are few of them), and the code points of
    its share of the validation part."""
    p, cfg, offset, outside, val = args
    text = _piece_text(p, cfg)
    outside, val = (_part_counts(text, offset, r, cfg.lowercase) for r in (outside, val))
    cps = np.flatnonzero(outside)
    return cps, outside[cps], np.flatnonzero(val)


def _part_counts(text: str, offset: int, ranges: list[tuple[int, int]], lowercase: bool) -> np.ndarray:
    """counts[cp] over the stretches of a part (its ranges) inside this text, which starts at `offset`."""
    counts = np.zeros(256, dtype=np.int64)
    for _, t in _stretches(text, offset, ranges, lowercase):
        c = char_counts(t)
        counts = _add(counts, np.flatnonzero(c), c[c > 0])
    return counts


def _encode_piece(args) -> None:
    """The last pass for a piece, or a file laid out whole (offset 0): its share of the training and validation ids,
    written into the file's slices. parts: (path, the file's first token there, the file's ranges) for train.bin and
    val.bin."""
    p, cfg, tok, offset, length, parts = args
    text = _text(p, cfg)
    if len(text) != length:
        raise UserError(f"{getattr(p, 'path', p)}: changed while it was being prepared; run `storyloom prepare` again")
    for (path, base, ranges), what in zip(parts, ("training", "validation")):
        for pos, t in _stretches(text, offset, ranges, cfg.lowercase):
            _write_ids(path, base + pos, tok.ids(t, "error" if what == "training" else cfg.unknown, f"the {what} text"),
                       tok)


def _write_ids(path: Path, at: int, ids: np.ndarray, tok) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, memoryview(np.ascontiguousarray(ids, dtype=tok.dtype())), at * tok.dtype().itemsize)
    finally:
        os.close(fd)


def _size(job) -> int:
    if isinstance(job, Piece):
        return job.end - job.start
    return len(job.text) if isinstance(job, Document) else job.stat().st_size


def _keep_freed_memory() -> None:
    """A worker's start: keep the memory it frees for its next piece. With glibc's defaults each freed piece-sized
    buffer goes back to the kernel and is faulted in again for the next piece: preparing one 1 GB file spent
    8.3-9.1 s in the kernel on 2 AMD Zen 3 cores, and 3.1-3.4 s with these settings, at the same peak RSS
    (benchmarks/README.md). Workers live for one pass, so what they keep goes back when they exit. Elsewhere than
    glibc there is no mallopt, and nothing is done."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD, at glibc's largest: a piece's buffers come from the heap, not mmap
    mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: free memory at the heap's top stays up to this


_SHARED = None  # in a worker: what every task of its pass reads, sent once rather than with each task (a vocabulary)


def _start_worker(shared) -> None:
    global _SHARED
    _SHARED = shared
    _keep_freed_memory()


BATCH_BYTES = 4 << 20  # small files go to a worker together, up to this much text


def batches(sizes: list[int], limit: int) -> list[tuple[int, int]]:
    """[start, end) of each run of consecutive jobs that together hold at most `limit` bytes (a larger job alone)."""
    out, a, total = [], 0, 0
    for i, n in enumerate(sizes):
        if i > a and total + n > limit:
            out.append((a, i))
            a, total = i, 0
        total += n
    return out + [(a, len(sizes))] if sizes else out


def _each(jobs: list) -> list:
    """A batch of jobs in a worker: each one's result."""
    return [_task(j) for j in jobs]


def _parallel(jobs: list, workers: int, bar: tqdm, shared=None):
    """_task(job, shared) over jobs in order, in `workers` processes (in this one when 1: _task(job, shared) there,
    and in a worker _task(job) with `shared` in _SHARED), advancing the bar by each job's size."""
    sizes = [_size(j[1][0]) for j in jobs]
    pool = None
    if workers > 1 and len(jobs) > 1:
        # fork: workers start in milliseconds and inherit the imported modules; they touch no torch state.
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        pool = ctx.Pool(min(workers, len(jobs)), initializer=_start_worker, initargs=(shared,))
    try:
        if pool is None:
            results = (_task(j, shared) for j in jobs)
        else:
            # Jobs go in batches of a few MB, at least 8 a worker: CPython's pool wakes a thread in this process on
            # every result (its worker handler waits on the result pipe too), and over a 1 GB library of 2,087 files
            # sent one at a time that thread took 1.4 s of a 2-core machine's CPU (benchmarks/README.md).
            runs = batches(sizes, max(min(BATCH_BYTES, sum(sizes) // (8 * workers)), 1))
            results = (r for out in pool.imap(_each, [jobs[a:b] for a, b in runs]) for r in out)
        for n, r in zip(sizes, results):
            bar.update(n)
            yield r
    finally:
        if pool is not None:
            pool.terminate()


def _task(args, shared=None):
    """One unit of a pass: a whole file, or a piece of a large one (a module function, so a pool can send it)."""
    fn, rest = args
    if fn == "split_unit":
        return _split_unit(rest, shared if shared is not None else _SHARED)
    return {"count": _count, "encode": _encode, "scan": _scan, "count_piece": _count_piece,
            "encode_piece": _encode_piece, "unit": lambda a: _unit(*a)}[fn](rest)


def _lay_out(jobs: list, split_files: dict, cfg: DataConfig, run, bar) -> tuple[dict, dict]:
    """Pass 1 over the files read in pieces: {file index: (offsets, lengths, train ranges, val ranges)} and
    {file index: its pieces' scans}; a file that must be read whole after all (`layout`) is in neither."""
    scans = list(run([("scan", (p, cfg)) for ps in split_files.values() for p in ps]))
    layouts, found = {}, {}
    for i, ps in split_files.items():
        mine, scans = scans[: len(ps)], scans[len(ps) :]
        laid = layout(jobs[i].name, ps, mine, cfg)
        if laid is None:
            bar.update(_size(jobs[i]))  # read whole after all: one pass fewer than counted
            continue
        lengths = [s[0] for s in mine]
        layouts[i], found[i] = (np.cumsum([0] + lengths[:-1]).tolist(), lengths, *laid), mine
    return layouts, found


def _prepare_chars(jobs: list, cfg: DataConfig, out: Path, workers: int, progress: bool, piece_bytes: int = PIECE_BYTES) -> dict:
    """Character level in constant memory: count characters, then encode, file by file (a large file piece by
    piece, after a first pass that lays it out) on `workers` processes."""
    split_files = {i: pieces(j, piece_bytes) for i, j in enumerate(jobs) if splittable(j, cfg, piece_bytes)}
    total = sum(_size(j) for j in jobs) * 2 + sum(_size(j) for i, j in enumerate(jobs) if i in split_files)
    run = lambda tasks: _parallel(tasks, workers, bar)  # noqa: E731
    with tqdm(total=total, unit="B", unit_scale=True, desc="prepare", disable=None if progress else True) as bar:
        layouts, scans = _lay_out(jobs, split_files, cfg, run, bar)  # file index -> ... of a file read in pieces
        counts = np.zeros(256, dtype=np.int64)
        tasks, owner = [], []  # pass 2: what to count, the file it belongs to, and whether it adds or takes away
        for i, (offsets, lengths, train, val) in layouts.items():
            ps = split_files[i]
            for s in scans[i]:
                counts = _add(counts, *s[4])
            outside = _outside(train, sum(lengths))
            for p, o, n in zip(ps, offsets, lengths):
                if any(a < o + n and b > o for a, b in outside):
                    tasks.append(("count_piece", (p, cfg, o, outside, val)))
                    owner.append((i, -1))
                else:
                    bar.update(p.end - p.start)
        for i, j in enumerate(jobs):
            if i not in layouts:
                tasks.append(("count", (j, cfg)))
                owner.append((i, 1))
        names = [j.name if isinstance(j, (Path, Document)) else "<stdin>" for j in jobs]
        chars = [(sum(b - a for a, b in layouts[i][2]), sum(b - a for a, b in layouts[i][3])) if i in layouts else None
                 for i in range(len(jobs))]
        seen = np.zeros(256, dtype=np.int64)  # the validation part's code points
        whole = {}  # file index -> the layout of a file read whole, as a file of one piece
        for (i, sign), r in zip(owner, run(tasks)):
            if i in layouts:
                counts = _add(counts, *r[:2], sign)
            else:
                names[i], n, spans, chars[i], *r = r
                if spans is not None:
                    whole[i] = ([0], [n], *spans)
                counts = _add(counts, *r[:2])
            seen = _add(seen, r[-1], np.ones(len(r[-1]), dtype=np.int64))
        layouts.update(whole)
        check_split(names, chars, cfg)
        tok, val_only = CharTokenizer.from_counts(counts), ()
        if cfg.unknown == "error":
            tok, val_only = with_val_only(tok, seen)
        # Each file's slice of train.bin and val.bin: (path, offset in tokens, tokens).
        places = [[], []]
        for part, name in enumerate(("train.bin", "val.bin")):
            tmp, n = out / f".{name}.tmp", [c[part] for c in chars]
            with open(tmp, "wb") as f:
                f.truncate(sum(n) * tok.dtype().itemsize)
            places[part] = [(tmp, int(at), k) for at, k in zip(np.cumsum([0] + n[:-1]), n)]
        tasks, ends = [], []  # ends: how far train.bin and val.bin are whole (in tokens) once a task is done
        for i, j in enumerate(jobs):
            t, v = places[0][i], places[1][i]
            if i in layouts:
                offsets, lengths, train, val = layouts[i]
                parts = ((t[0], t[1], train), (v[0], v[1], val))
                for p, o, n in zip(split_files.get(i, [j]), offsets, lengths):
                    tasks.append(("encode_piece", (p, cfg, tok, o, n, parts)))
                    ends.append((t[1] + _covered(train, o + n), v[1] + _covered(val, o + n)))
            else:
                tasks.append(("encode", (j, cfg, tok, (t, v))))
                ends.append((t[1] + t[2], v[1] + v[2]))
        # The pool returns results in order, so train.bin and val.bin are whole up to a task's ends when it is
        # done: they are hashed and written back then, while the workers encode what follows.
        filled = [Filled(places[part][0][0]) for part in (0, 1)]
        try:
            for (t_end, v_end), _ in zip(ends, run(tasks)):
                filled[0].upto(t_end * tok.dtype().itemsize)
                filled[1].upto(v_end * tok.dtype().itemsize)
            entries = {name: f.close() for name, f in zip(("train.bin", "val.bin"), filled)}
        finally:
            for f in filled:
                f.abandon()
        for part, name in enumerate(("train.bin", "val.bin")):
            os.replace(places[part][0][0], out / name)
        fsync_dir(out)
    train_chars, val_chars = (sum(c[part] for c in chars) for part in (0, 1))
    return {"tokenizer": tok, "entries": entries, "train_tokens": train_chars, "val_tokens": val_chars, "train_chars": train_chars,
            "val_chars": val_chars - 1, "val_extra_nats": 0.0,  # every validation character after the first is scored
            "val_only": list(val_only),
            "train_works": [n for n in names if roles(n, cfg)[0]], "val_works": [n for n in names if roles(n, cfg)[1]]}


def _unit_specs(jobs: list, split_files: dict, layouts: dict) -> list[tuple]:
    """The units the word and BPE passes read in order: (file index, a piece and its place in the file's layout,
    or the whole file and None)."""
    specs = []
    for i, j in enumerate(jobs):
        if i in layouts:
            offsets, ns, train, val = layouts[i]
            specs += [(i, p, (o, n, train, val)) for p, o, n in zip(split_files[i], offsets, ns)]
        else:
            specs.append((i, j, None))
    return specs


def _unit(unit, place, cfg: DataConfig) -> tuple[tuple | None, str, str]:
    """A file's or a piece's (name and lengths for a whole file, training text, validation text)."""
    if place is None:
        doc, train, val = _job(unit, cfg)
        return (doc.name, (len(train), len(val))), train, val
    o, n, train, val = place
    text = _piece_text(unit, cfg)
    if len(text) != n:
        raise UserError(f"{unit.path}: changed while it was being prepared; run `storyloom prepare` again")
    return None, *("".join(t for _, t in _stretches(text, o, r, cfg.lowercase)) for r in (train, val))


def _split_unit(args, tok: Tokenizer | None) -> tuple:
    """A unit's training text cut as Rejoin cuts it (tokenize.cut): (name and lengths, the head before its first
    cut, what the middle gives, the tail after its last, the validation text). The middle gives its word and
    character counts (word level's fit: they add up over texts cut there), or its ids, each
    text between two cuts encoded alone (with `tok`); None when the text has no cut, and then the head is all of it.
    Heads and tails join their neighbours' in the main process."""
    unit, place, cfg, size, what = args
    info, train, val = _unit(unit, place, cfg)
    val = val if what == "encode" else ""
    parts = cut(train, size)
    if parts is None:
        return info, train, None, "", val
    head, middle, tail = parts
    if what == "count":
        done = WordTokenizer.counts("".join(middle))
    else:
        done = tok.ids_many(middle, "replace" if tok.charges_unknown else "error", "the training text")
    return info, head, done, tail, val


def _in_order(specs: list, jobs: list, layouts: dict, results, lengths: list | None = None):
    """The units' results (from their tasks, in order) without the name and lengths of a whole file, which go to
    `lengths` a file at a time, as those of a file in pieces do from its layout."""
    for k, ((i, _, place), r) in enumerate(zip(specs, results)):
        if lengths is not None:
            if place is None:
                lengths.append(r[0])
            elif k + 1 == len(specs) or specs[k + 1][0] != i:  # a piece, the file's last
                _, _, train, val = layouts[i]
                lengths.append((jobs[i].name, (sum(b - a for a, b in train), sum(b - a for a, b in val))))
        yield r[1:]


def _rejoined(results, finish):
    """Split units' results in the order Rejoin would give their texts: each head joined to the tail and the uncut
    texts before it goes to `finish(text, None)`, then the middle's result to `finish(None, result)`, and the last
    tail at the end; each unit's validation text is yielded."""
    carry: list[str] = []
    for head, done, tail, val in results:
        if done is None:
            carry.append(head)
        else:
            finish("".join(carry) + head, None)
            finish(None, done)
            carry = [tail]
        yield val
    finish("".join(carry), None)


def _prepare_tokens(jobs: list, cfg: DataConfig, out: Path, workers: int, progress: bool,
                    piece_bytes: int = PIECE_BYTES) -> dict:
    """Word and subword levels, a file or piece in memory at a time per process: fit the tokenizer on the training
    text, then encode both parts in texts cut where tokens break (tokenize.Rejoin), appending their ids. The ids, the
    vocabulary and the scores are those of the whole text (corpus.build).

    Word level counts and encodes the units' middles on `workers` processes (tokenize.safe_cuts: a middle's tokens
    are its own), joining their edges here. BPE fits in one pass in order (Hugging Face's trainer reads the text as
    one stream) and encodes here, its encoder on every core itself (BPETokenizer.ids_many)."""
    split_files = {i: pieces(j, piece_bytes) for i, j in enumerate(jobs) if splittable(j, cfg, piece_bytes)}
    total = sum(_size(j) for j in jobs) * 2 + sum(_size(j) for i, j in enumerate(jobs) if i in split_files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="prepare", disable=None if progress else True) as bar:
        def run(tasks: list, n: int, shared=None):
            return _parallel(tasks, n, bar, shared)

        layouts, _ = _lay_out(jobs, split_files, cfg, lambda tasks: run(tasks, workers), bar)
        specs = _unit_specs(jobs, split_files, layouts)
        split = lambda what: [("split_unit", (u, p, cfg, CUT, what)) for _, u, p in specs]  # noqa: E731
        lengths: list = []
        if cfg.level == "word":
            tokens, chars = Counter(), Counter()

            def add(text, counts):
                for into, c in zip((tokens, chars), counts or WordTokenizer.counts(text)):
                    into.update(c)

            for _ in _rejoined(_in_order(specs, jobs, layouts, run(split("count"), workers), lengths), add):
                pass
            tok = WordTokenizer.from_counts(tokens, chars, cfg.max_vocab, cfg.min_count)
        else:
            units = _in_order(specs, jobs, layouts, run([("unit", (u, p, cfg)) for _, u, p in specs], 1), lengths)
            tok = fit_pieces((train for train, _ in units), cfg.level, cfg.vocab_size, cfg.max_vocab, cfg.min_count)
        check_split([n for n, _ in lengths], [c for _, c in lengths], cfg)
        tmp = [out / ".train.bin.tmp", out / ".val.bin.tmp"]
        rejoin, n_ids = Rejoin(), [0, 0]
        val_chars, extra = 0, 0.0
        with open(tmp[0], "wb") as ft, open(tmp[1], "wb") as fv:
            def write(f, part, ids):
                f.write(np.ascontiguousarray(ids, dtype=tok.dtype()).tobytes())
                n_ids[part] += len(ids)

            def train_ids(text, ids):
                if ids is None and text:
                    ids = tok.ids(text, "replace" if tok.charges_unknown else "error", "the training text")
                if ids is not None:
                    write(ft, 0, ids)

            def val_texts(texts):
                nonlocal val_chars, extra
                for t in texts:
                    s = tok.scored(t, cfg.unknown, "the validation text", opens=n_ids[1] == 0)
                    write(fv, 1, s.ids)
                    val_chars, extra = val_chars + s.chars, extra + s.extra_nats

            # BPE's encoder runs on every core by itself; in worker processes it would run on one each
            encoders = workers if cfg.level == "word" else 1
            for val in _rejoined(_in_order(specs, jobs, layouts, run(split("encode"), encoders, tok)), train_ids):
                val_texts(rejoin.feed(val))
            val_texts(rejoin.close())
            for f in (ft, fv):
                f.flush()
                os.fsync(f.fileno())
        for t, name in zip(tmp, ("train.bin", "val.bin")):
            os.replace(t, out / name)
        fsync_dir(out)
    names = [n for n, _ in lengths]
    return {"tokenizer": tok, "train_tokens": n_ids[0], "val_tokens": n_ids[1],
            "train_chars": sum(c[0] for _, c in lengths), "val_chars": val_chars, "val_extra_nats": extra,
            "train_works": [n for n in names if roles(n, cfg)[0]], "val_works": [n for n in names if roles(n, cfg)[1]],
            "val_only": []}


def prepare(sources, out: str | Path, workers: int = 0, progress: bool = True, **flags) -> dict:
    """Clean, split and encode sources once into `out` for `train([out])`: the data flags of `train` apply.

    Memory stays near one file's size (a large file's piece's: 16 MB) whatever the corpus's: at character level
    the files are read twice (count, then encode), one at a time per process, on `workers` processes (0: one per
    physical core); at word and BPE level twice in order (fit the tokenizer, then encode), word level's passes on
    `workers` processes too.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UserError(f"--workers must be >= 0 (0: one per core), got {workers}")
    given = {k: v for k, v in flags.items() if v is not None}
    data = benchmark_split(sources, presets.build("default", given).data, given)
    meta = prepare_corpus(locate(sources), data, out, sources, workers=workers or physical_cores(), progress=progress)
    note_val_only(meta["val_only"])
    return meta


def prepare_corpus(jobs: list, cfg: DataConfig, out: str | Path, sources=(), workers: int = 0, progress: bool = True,
                   piece_bytes: int = PIECE_BYTES) -> dict:
    """Clean, split and encode once: train.bin and val.bin (raw ids in the smallest unsigned type), vocab.json, prepared.json.

    jobs are source files (as sources.locate gives them) or documents
    already read. workers: processes for the passes that run in parallel (character and word level's, and the
    first pass over a large file at every level; `prepare` passes one per physical core).
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / PREPARED).is_file():
        raise UserError(f"--out {out}: directory holds other files; choose a new --out")
    jobs = [Document("<stdin>", load(None, cfg.encoding).text) if j is None else j for j in jobs]  # stdin is read once
    out.mkdir(parents=True, exist_ok=True)
    (out / PREPARED).unlink(missing_ok=True)  # preparing again: the old marker must not vouch for half-written files
    prepare_level = _prepare_chars if cfg.level == "char" else _prepare_tokens
    r = prepare_level(jobs, cfg, out, max(workers, 1), progress, piece_bytes)
    tok, made = r.pop("tokenizer"), r.pop("entries", {})  # entries made while the files were written
    write_atomic(out / "vocab.json", dumps(tok.to_dict()))
    meta = {"dtype": tok.dtype().name, **r, "data": dataclasses.asdict(cfg), "sources": [str(s) for s in sources]}
    write_json(out / MANIFEST, {name: made.get(name) or entry(path=out / name) for name in ("train.bin", "val.bin", "vocab.json")})
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
                  meta["val_works"], tuple(meta.get("val_only", ()))), cfg


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
