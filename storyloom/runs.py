"""A run is a directory: weights in safetensors, everything else in JSON.

    manifest.json        SHA-256 and size of each file below
    config.json          RunConfig plus what the run was trained on
    vocab.json           the tokenizer
    best.safetensors     weights with the best validation bpc
    metrics.jsonl        one JSON object per logged step (append-only; the
                         manifest covers the part written by the last checkpoint)
    novelty.safetensors  the training text's suffix array, made on first use
    checkpoints/step-00001200/   the newest --keep checkpoints, each whole on its own:
        model.safetensors    weights
        trainer.safetensors  optimizer moments, carried LSTM state, RNG states
        trainer.json         counters, schedule position, optimizer settings
        manifest.json        SHA-256 and size of those three

Nothing is pickled and nothing is unpickled. Every file is written to a
temporary name, fsynced, then renamed; a checkpoint is written as a temporary
directory and renamed into place, so a kill or a full disk leaves the
previous one whole. Before a top-level file is replaced the manifest accepts
both its old and new hash, so a crash between the two writes leaves a run
that still verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .config import RunConfig
from .errors import UserError
from .model import LanguageModel
from .tokenize import Tokenizer, from_dict

MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        _write_synced(Path(tmp), data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def looks_pickled(data: bytes) -> bool:
    """Pickle protocol 2+ opens with 0x80 and the protocol; torch.save's zip holds a pickle too."""
    return (len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5) or data[:4] == b"PK\x03\x04"


def refuse_pickle(path: Path) -> None:
    raise UserError(f"{path}: a pickle file (as PyTorch .pt/.pth/.pkl checkpoints are); storyloom never unpickles, "
                    "because loading a pickle can run any code; give a run directory made by `storyloom train`")


def _json(path: Path, data: bytes):
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: damaged JSON ({e}); restore the file or train the run again") from None


def _tensors(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    try:
        return st_load(data)
    except (SafetensorError, ValueError, OSError, RuntimeError) as e:
        raise UserError(f"{path}: damaged weights file ({e}); restore it or train the run again") from None


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: missing; the run is incomplete (train it, or restore the file)") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a directory where a file belongs; the run is damaged") from None
    if looks_pickled(data):
        refuse_pickle(path)
    return data


def _verify(path: Path, data: bytes, entry: dict | None) -> bytes:
    """data if it matches its manifest entry (or the previous one, while a write is in flight)."""
    if entry is None:
        raise UserError(f"{path}: not listed in the run's manifest.json; the run is damaged or was edited by hand")
    accepted = [entry] + ([entry["previous"]] if entry.get("previous") else [])
    if any(sha256(data) == e["sha256"] for e in accepted):
        return data
    if all(len(data) < e["bytes"] for e in accepted):
        why = f"truncated: {len(data)} of {entry['bytes']} bytes"
    else:
        why = "its SHA-256 differs from manifest.json: damaged or edited by hand"
    raise UserError(f"{path}: {why}; restore it from a copy or train the run again")


def _manifest(path: Path) -> dict:
    m = _json(path, _read(path))
    ok = isinstance(m, dict) and all(
        isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("bytes"), int)
        and (e.get("previous") is None or isinstance(e["previous"], dict) and isinstance(e["previous"].get("sha256"), str)
             and isinstance(e["previous"].get("bytes"), int))
        for e in m.values())
    if not ok:
        raise UserError(f"{path}: not a storyloom manifest; the run is damaged or was edited by hand")
    return m


class Checkpoint:
    """One complete training checkpoint: a directory written whole, then renamed into place."""

    def __init__(self, path: Path):
        self.path = path
        self.step = int(path.name.split("-")[1])
        self._manifest: dict | None = None  # read once: a checkpoint never changes after its rename

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r})"

    def read(self, name: str) -> bytes:
        if self._manifest is None:
            self._manifest = _manifest(self.path / MANIFEST)
        return _verify(self.path / name, _read(self.path / name), self._manifest.get(name))

    def weights(self) -> dict[str, torch.Tensor]:
        return _tensors(self.path / "model.safetensors", self.read("model.safetensors"))

    def trainer(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = _tensors(self.path / "trainer.safetensors", self.read("trainer.safetensors"))
        return tensors, _json(self.path / "trainer.json", self.read("trainer.json"))


class Run:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self) -> bool:
        return self.file("config.json").is_file()

    # -- making and opening ----------------------------------------------
    @classmethod
    def create(cls, path: str | Path, cfg: RunConfig, tokenizer: Tokenizer, info: dict, overwrite: bool = False) -> "Run":
        run = cls(path)
        if run.path.is_file():
            raise UserError(f"--out {run.path}: a file, not a directory; choose another --out")
        if run.path.exists() and any(run.path.iterdir()):
            if not run.exists():
                raise UserError(f"--out {run.path}: directory holds other files, not a run; choose a new --out "
                                "(storyloom deletes nothing it did not make)")
            if not overwrite:
                raise UserError(f"--out {run.path}: already holds a run; choose a new --out, --resume it to continue, "
                                "or add --overwrite to replace it")
            shutil.rmtree(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        write_json(run.file(MANIFEST), {})
        run.put("config.json", _dumps({**cfg.to_dict(), "info": info}))
        run.put("vocab.json", _dumps(tokenizer.to_dict()))
        return run

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        run = cls(path)
        if run.path.is_file():
            head = run.path.open("rb").read(4)
            if looks_pickled(head) or run.path.suffix.lower() in PICKLE_SUFFIXES:
                refuse_pickle(run.path)
            raise UserError(f"{path}: a file, not a run directory; give a directory made by `storyloom train`")
        if not run.path.is_dir():
            raise UserError(f"{path}: no such run directory; give a directory made by `storyloom train`")
        if not run.exists():
            pickles = sorted(p.name for p in run.path.iterdir() if p.is_file() and (p.suffix.lower() in PICKLE_SUFFIXES
                                                                                    or looks_pickled(p.open("rb").read(4))))
            extra = f" (it holds {', '.join(pickles)}: pickles, which storyloom never loads)" if pickles else ""
            raise UserError(f"{path}: not a storyloom run (no config.json){extra}; give a directory made by `storyloom train`")
        if not run.file(MANIFEST).is_file():
            raise UserError(f"{path}: no manifest.json, so its files cannot be verified; the run is damaged "
                            "or from an older storyloom: train it again")
        return run

    # -- verified top-level files ------------------------------------------
    def manifest(self) -> dict:
        return _manifest(self.file(MANIFEST))

    def read(self, name: str) -> bytes:
        return _verify(self.file(name), _read(self.file(name)), self.manifest().get(name))

    def read_json(self, name: str):
        return _json(self.file(name), self.read(name))

    def has(self, name: str) -> bool:
        return name in self.manifest() and self.file(name).exists()

    def put(self, name: str, data: bytes) -> None:
        m = self.manifest()
        entry = {"sha256": sha256(data), "bytes": len(data)}
        old = m.get(name)
        if old != entry:
            m[name] = {**entry, "previous": {k: old[k] for k in ("sha256", "bytes")} if old else None}
            write_json(self.file(MANIFEST), m)
        write_atomic(self.file(name), data)
        m[name] = entry
        write_json(self.file(MANIFEST), m)

    def config(self) -> RunConfig:
        return RunConfig.from_dict(self.read_json("config.json"))

    def info(self) -> dict:
        return self.read_json("config.json").get("info", {})

    def set_train_config(self, train: dict) -> None:
        d = self.read_json("config.json")
        d["train"] = train
        self.put("config.json", _dumps(d))

    def tokenizer(self) -> Tokenizer:
        d = self.read_json("vocab.json")
        try:
            return from_dict(d)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{self.file('vocab.json')}: not a storyloom vocabulary ({e}); the run is damaged") from None

    # -- weights -----------------------------------------------------------
    def save_weights(self, model: torch.nn.Module, which: str = "best") -> None:
        self.put(f"{which}.safetensors", tensor_bytes(model.state_dict()))

    def load_model(self, which: str = "best", device: str | torch.device = "cpu") -> LanguageModel:
        cfg = self.config()
        tok = self.tokenizer()
        if cfg.model.vocab_size != len(tok):
            raise UserError(f"{self.path}: config.json says {cfg.model.vocab_size} characters but vocab.json has {len(tok)}; "
                            "the run is damaged")
        if which == "best":
            where, weights = self.file("best.safetensors"), _tensors(self.file("best.safetensors"), self.read("best.safetensors"))
        elif which == "last":
            ck = self.latest()
            where, weights = ck.path / "model.safetensors", ck.weights()
        else:
            raise UserError(f"--which must be best or last, got {which!r}")
        model = LanguageModel(cfg.model)
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise UserError(f"{where}: weights do not match config.json ({first}); the run is damaged") from None
        return model.to(device).eval()

    # -- checkpoints -------------------------------------------------------
    def checkpoints(self) -> list[Checkpoint]:
        """Complete checkpoints, oldest first (half-written ones are hidden temporary directories)."""
        d = self.file("checkpoints")
        if not d.is_dir():
            return []
        found = [p for p in d.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
        return sorted((Checkpoint(p) for p in found), key=lambda c: c.step)

    def latest(self) -> Checkpoint:
        cks = self.checkpoints()
        if not cks:
            raise UserError(f"{self.path}: no checkpoint yet; train the run first")
        return cks[-1]

    def save_checkpoint(self, step: int, model: torch.nn.Module, tensors: dict[str, torch.Tensor], meta: dict,
                        keep: int = 2) -> Checkpoint:
        files = {"model.safetensors": tensor_bytes(model.state_dict()), "trainer.safetensors": tensor_bytes(tensors),
                 "trainer.json": _dumps(meta)}
        root = self.file("checkpoints")
        root.mkdir(exist_ok=True)
        final = root / f"step-{step:08d}"
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.", suffix=".tmp"))
        try:
            for name, data in files.items():
                _write_synced(tmp / name, data)
            _write_synced(tmp / MANIFEST, _dumps({n: {"sha256": sha256(d), "bytes": len(d)} for n, d in files.items()}))
            _fsync_dir(tmp)
            if final.exists():  # the same step saved again (a run that ends on a checkpoint)
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(root)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            before = [c for c in self.checkpoints() if c.path != final]
            kept = f"the checkpoint at step {before[-1].step} is intact" if before else "no earlier checkpoint exists"
            raise UserError(f"{final}: could not save the checkpoint ({e.strerror or e}); {kept}; "
                            f"free space and continue with: storyloom train --resume {self.path}") from None
        for old in self.checkpoints()[:-keep]:
            shutil.rmtree(old.path, ignore_errors=True)
        self.seal_metrics()
        return Checkpoint(final)

    def load_trainer(self) -> tuple[dict[str, torch.Tensor], dict]:
        return self.latest().trainer()

    # -- metrics -----------------------------------------------------------
    def append_metrics(self, row: dict) -> None:
        with open(self.file(METRICS), "a") as f:
            f.write(json.dumps(row) + "\n")

    def metrics(self) -> list[dict]:
        p = self.file(METRICS)
        if not p.exists():
            return []
        data = p.read_bytes()
        entry = self.manifest().get(METRICS)
        if entry:
            _verify(p, data[: entry["bytes"]], entry)
        rows = []
        for line in data.decode("utf-8", "replace").split("\n"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a torn last line from a killed run; rows up to the checkpoint are verified above
        return rows

    def seal_metrics(self) -> None:
        """Record the log as it stands in the manifest: what the last checkpoint vouches for."""
        p = self.file(METRICS)
        data = p.read_bytes() if p.exists() else b""
        m = self.manifest()
        m[METRICS] = {"sha256": sha256(data), "bytes": len(data)}
        write_json(self.file(MANIFEST), m)

    def truncate_metrics(self, step: int) -> None:
        """Drop rows logged after `step`: a resumed run logs them again."""
        rows = [r for r in self.metrics() if r.get("step", 0) <= step]
        self.put(METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode())


def _dumps(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def write_json(path: Path, obj) -> None:
    write_atomic(path, _dumps(obj))


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    # safetensors refuses tensors that share memory (a tied head and embedding): save copies.
    return st_save({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()})
