"""A run is a directory: weights in safetensors, everything else in JSON (files.py: how; checkpoint.py: what a checkpoint holds).

    manifest.json        SHA-256 and size of each file below
    config.json          RunConfig plus what the run was trained on
    vocab.json           the tokenizer
    best.safetensors     weights with the best validation bpc
    metrics.jsonl        one JSON object per logged step (append-only; the
                         manifest covers the part written by the last checkpoint)
    novelty.safetensors  the training text's suffix array, made on first use
    checkpoints/step-00001200/   the newest --keep checkpoints, each whole on its own:
        model.safetensors    weights
        trainer.safetensors  optimizer moments, carried state, RNG states
        trainer.json         counters, schedule position, optimizer settings
        manifest.json        SHA-256 and size of those three

Every JSON file carries "format" (files.FORMAT). Nothing is pickled and nothing is unpickled. Every file is written to a
temporary name, fsynced, then renamed; a checkpoint is written as a temporary
directory and renamed into place, so a kill or a full disk leaves the
previous one whole. Before a top-level file is replaced the manifest accepts
both its old and new hash, so a crash between the two writes leaves a run
that still verifies.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from . import checkpoint
from .checkpoint import TrainerState
from .config import RunConfig
from .errors import UserError
from .files import (MANIFEST, PICKLE_SUFFIXES, dumps, entry, fsync_dir, looks_pickled, parse_json, parse_tensors,
                    read_bytes, read_manifest, refuse_pickle, tensor_bytes, verify, write_atomic, write_json, write_synced)
from .tokenize import Tokenizer, from_dict

METRICS = "metrics.jsonl"
BASES = Path(__file__).parent / "bases"  # runs shipped in the package, to fine-tune from: `--init shakespeare`


def base_path(name: str | Path) -> Path:
    """A run directory, or the shipped base of that name (when no such directory exists here)."""
    p = Path(name)
    if not p.exists() and (BASES / str(name) / "config.json").is_file():
        return BASES / str(name)
    return p


class Checkpoint:
    """One complete training checkpoint: a directory written whole, then renamed into place."""

    def __init__(self, path: Path):
        self.path = path
        self.step = int(path.name.split("-")[1])
        self.manifest: dict | None = None  # read once: a checkpoint never changes after its rename

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r})"

    def read(self, name: str) -> bytes:
        if self.manifest is None:
            self.manifest = read_manifest(self.path / MANIFEST)
        return verify(self.path / name, read_bytes(self.path / name), self.manifest.get(name))

    def weights(self) -> dict[str, torch.Tensor]:
        return parse_tensors(self.path / "model.safetensors", self.read("model.safetensors"))

    def position(self) -> checkpoint.Position:
        return checkpoint.read_meta(self.path / "trainer.json", self.read("trainer.json"))[0]

    def state(self) -> TrainerState:
        return checkpoint.unpack({name: self.read(name) for name in checkpoint.FILES}, self.path)


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
        run.put("config.json", dumps({**cfg.to_dict(), "info": info}))
        run.put("vocab.json", dumps(tokenizer.to_dict()))
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
        return read_manifest(self.file(MANIFEST))

    def read(self, name: str) -> bytes:
        return verify(self.file(name), read_bytes(self.file(name)), self.manifest().get(name))

    def read_json(self, name: str):
        return parse_json(self.file(name), self.read(name))

    def has(self, name: str) -> bool:
        return name in self.manifest() and self.file(name).exists()

    def put(self, name: str, data: bytes) -> None:
        m = self.manifest()
        new = entry(data)
        old = m.get(name)
        if old != new:
            m[name] = {**new, "previous": {k: old[k] for k in ("sha256", "bytes")} if old else None}
            write_json(self.file(MANIFEST), m)
        write_atomic(self.file(name), data)
        m[name] = new
        write_json(self.file(MANIFEST), m)

    def config(self) -> RunConfig:
        return RunConfig.from_dict(self.read_json("config.json"))

    def info(self) -> dict:
        return self.read_json("config.json").get("info", {})

    def set_train_config(self, train: dict) -> None:
        d = self.read_json("config.json")
        d["train"] = train
        self.put("config.json", dumps(d))

    def tokenizer(self) -> Tokenizer:
        d = self.read_json("vocab.json")
        try:
            return from_dict(d)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{self.file('vocab.json')}: not a storyloom vocabulary ({e}); the run is damaged") from None

    # -- weights -----------------------------------------------------------
    def save_weights(self, model: torch.nn.Module, which: str = "best") -> None:
        self.put(f"{which}.safetensors", tensor_bytes(model.state_dict()))

    def weights(self, which: str = "best") -> tuple[Path, dict[str, torch.Tensor]]:
        """(where they were read from, the state_dict) of the best weights or the newest checkpoint's."""
        if which == "best":
            where = self.file("best.safetensors")
            return where, parse_tensors(where, self.read("best.safetensors"))
        if which == "last":
            ck = self.latest()
            return ck.path / "model.safetensors", ck.weights()
        raise UserError(f"--which must be best or last, got {which!r}")

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

    def save_checkpoint(self, state: TrainerState, keep: int = 2) -> Checkpoint:
        files = checkpoint.pack(state)
        step = state.position.step
        root = self.file("checkpoints")
        root.mkdir(exist_ok=True)
        final = root / f"step-{step:08d}"
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.", suffix=".tmp"))
        try:
            for name, data in files.items():
                write_synced(tmp / name, data)
            write_synced(tmp / MANIFEST, dumps({n: entry(d) for n, d in files.items()}))
            fsync_dir(tmp)
            if final.exists():  # the same step saved again (a run that ends on a checkpoint)
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(root)
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

    # -- metrics -----------------------------------------------------------
    def append_metrics(self, row: dict) -> None:
        with open(self.file(METRICS), "a") as f:
            f.write(json.dumps(row) + "\n")

    def metrics(self) -> list[dict]:
        p = self.file(METRICS)
        if not p.exists():
            return []
        data = p.read_bytes()
        e = self.manifest().get(METRICS)
        if e:
            verify(p, data[: e["bytes"]], e)
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
        m = self.manifest()
        m[METRICS] = entry(p.read_bytes() if p.exists() else b"")
        write_json(self.file(MANIFEST), m)

    def truncate_metrics(self, step: int) -> None:
        """Drop rows logged after `step`: a resumed run logs them again."""
        rows = [r for r in self.metrics() if r.get("step", 0) <= step]
        self.put(METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode())
