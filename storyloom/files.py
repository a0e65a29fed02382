"""How storyloom writes and reads the directories it makes (runs and prepared corpora): atomic, verified, versioned.

- Every file is written to a temporary name, fsynced, then renamed into place,
  so a kill or a full disk leaves the old file whole.
- A directory's manifest.json holds the SHA-256 and size of each file; every
  read checks them, so damage, truncation and hand edits are one clear error.
- Every JSON file storyloom writes carries `"format": FORMAT`. A file from a
  newer storyloom is refused with one line; a file without the key was
  written before formats were numbered (format 0) and still reads.
- Nothing is pickled and nothing is unpickled: a pickle (PyTorch .pt/.pth
  checkpoints are one) is refused by its bytes or its name before anything
  parses it, because loading one can run any code.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError

from .errors import UserError

if TYPE_CHECKING:
    import torch

FORMAT = 1  # what this storyloom writes; it reads every format up to this one
MANIFEST = "manifest.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    """A large file's SHA-256, read in 16 MB pieces (about 1 GB/s)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class Filled:
    """A file that other processes fill in place, its manifest entry made as they go. Told how far from its start
    the file is final (`upto`), it hashes that stretch and writes it back to disk while the rest is still being
    written; `close` makes it durable and returns its entry. Hashing and writing back a 1 GB train.bin at the end
    took 2.3 s of a 1 GB prepare on 2 AMD Zen 3 cores (benchmarks/README.md)."""

    WRITE_BACK = 64 << 20  # bytes between syncs

    def __init__(self, path: Path):
        self.fd, self.hash, self.done, self.synced = os.open(path, os.O_RDWR), hashlib.sha256(), 0, 0

    def upto(self, end: int) -> None:
        while self.done < end:
            block = os.pread(self.fd, min(end - self.done, 1 << 24), self.done)
            if not block:
                raise OSError(f"{end - self.done} bytes short of what the workers wrote: the file was changed")
            self.hash.update(block)
            self.done += len(block)
        if self.done - self.synced >= self.WRITE_BACK:
            os.fdatasync(self.fd)
            self.synced = self.done

    def close(self) -> dict:
        """Durable, closed, and its manifest entry: the whole file must have been passed to `upto`."""
        try:
            if self.done != os.fstat(self.fd).st_size:
                raise OSError(f"hashed {self.done} bytes of {os.fstat(self.fd).st_size}")
            os.fsync(self.fd)
            return {"sha256": self.hash.hexdigest(), "bytes": self.done}
        finally:
            self.abandon()

    def abandon(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write_synced(Path(tmp), data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def dumps(obj: dict) -> bytes:
    """A JSON file's bytes, stamped with this storyloom's format."""
    return (json.dumps({**obj, "format": FORMAT}, indent=1, sort_keys=True) + "\n").encode()


def write_json(path: Path, obj: dict) -> None:
    write_atomic(path, dumps(obj))


# The two tensor functions import safetensors' torch half where they run: it imports torch (2-3 s), and
# `storyloom prepare`, which writes no tensors, starts without it.
def tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save as st_save

    # safetensors refuses tensors that share memory (a tied head and embedding): save copies.
    return st_save({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()})


def looks_pickled(data: bytes) -> bool:
    """Pickle protocol 2+ opens with 0x80 and the protocol; torch.save's zip holds a pickle too."""
    return (len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5) or data[:4] == b"PK\x03\x04"


def refuse_pickle(path: Path) -> None:
    raise UserError(f"{path}: a pickle file (as PyTorch .pt/.pth/.pkl checkpoints are); storyloom never unpickles, "
                    "because loading a pickle can run any code; give a run directory made by `storyloom train`")


def read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: missing; the directory is incomplete (make it again, or restore the file)") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a directory where a file belongs; the directory is damaged") from None
    if looks_pickled(data):
        refuse_pickle(path)
    return data


def check_format(path: Path, d) -> None:
    n = d.get("format", 0) if isinstance(d, dict) else 0
    if not isinstance(n, int) or isinstance(n, bool) or n > FORMAT:
        raise UserError(f"{path}: written by a newer storyloom (file format {n}; this one reads formats up to {FORMAT}); "
                        "upgrade storyloom to open it")


def parse_json(path: Path, data: bytes):
    """JSON of a file storyloom wrote, its "format" checked (0 where it has none)."""
    try:
        d = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: damaged JSON ({e}); restore the file or make it again") from None
    check_format(path, d)
    return d


def parse_tensors(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load as st_load

    try:
        return st_load(data)
    except (SafetensorError, ValueError, OSError, RuntimeError) as e:
        raise UserError(f"{path}: damaged weights file ({e}); restore it or make it again") from None


def verify(path: Path, data: bytes | None, entry: dict | None) -> bytes | None:
    """data if it matches its manifest entry (or the previous one, while a write is in flight).

    data None: a large file, hashed from disk in pieces instead of held in memory.
    """
    if entry is None:
        raise UserError(f"{path}: not listed in its directory's manifest.json; the directory is damaged or was edited by hand")
    accepted = [entry] + ([entry["previous"]] if entry.get("previous") else [])
    size = len(data) if data is not None else path.stat().st_size
    if any(size == e["bytes"] for e in accepted):
        digest = sha256(data) if data is not None else sha256_file(path)
        if any(digest == e["sha256"] for e in accepted):
            return data
    if all(size < e["bytes"] for e in accepted):
        why = f"truncated: {size} of {entry['bytes']} bytes"
    else:
        why = "its SHA-256 differs from manifest.json: damaged or edited by hand"
    raise UserError(f"{path}: {why}; restore it from a copy or make it again")


def read_manifest(path: Path) -> dict:
    """{file name: {"sha256", "bytes", "previous"?}} of a manifest.json."""
    m = parse_json(path, read_bytes(path))
    if isinstance(m, dict):
        m.pop("format", None)
    ok = isinstance(m, dict) and all(
        isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("bytes"), int)
        and (e.get("previous") is None or isinstance(e["previous"], dict) and isinstance(e["previous"].get("sha256"), str)
             and isinstance(e["previous"].get("bytes"), int))
        for e in m.values())
    if not ok:
        raise UserError(f"{path}: not a storyloom manifest; the directory is damaged or was edited by hand")
    return m


def entry(data: bytes | None = None, path: Path | None = None) -> dict:
    """A manifest entry for bytes in memory, or for a large file on disk."""
    if data is not None:
        return {"sha256": sha256(data), "bytes": len(data)}
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}
