"""A run is a directory: weights in safetensors, everything else in JSON.

    config.json          RunConfig plus what the run was trained on
    vocab.json           the tokenizer
    best.safetensors     weights with the best validation bpc
    last.safetensors     weights at the last checkpoint
    trainer.safetensors  optimizer moments, carried LSTM state, RNG state
    trainer.json         counters, schedule position, optimizer hyperparameters
    metrics.jsonl        one JSON object per logged step

Nothing is pickled and nothing is unpickled. Every file is written to a
temporary name, fsynced, then renamed, so a crash leaves the old file whole.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .config import RunConfig
from .errors import UserError
from .model import LanguageModel
from .tokenize import CharTokenizer

WEIGHTS = ("best", "last")


def write_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_json(path: Path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path.parent}: not a storyloom run ({path.name} is missing); give a directory made by `storyloom train`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: damaged JSON ({e}); restore the file or train the run again") from None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    write_atomic(path, st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return st_load(Path(path).read_bytes())
    except FileNotFoundError:
        raise UserError(f"{path}: missing; the run has no such checkpoint (train it first)") from None
    except (SafetensorError, ValueError, OSError) as e:
        raise UserError(f"{path}: damaged weights file ({e}); restore it or train the run again") from None


class Run:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self) -> bool:
        return self.file("config.json").is_file()

    @classmethod
    def create(cls, path: str | Path, cfg: RunConfig, tokenizer: CharTokenizer, info: dict) -> "Run":
        run = cls(path)
        if run.path.exists() and any(run.path.iterdir()):
            raise UserError(f"--out {run.path}: directory is not empty; choose a new --out, or --resume it to continue that run")
        run.path.mkdir(parents=True, exist_ok=True)
        write_json(run.file("config.json"), {**cfg.to_dict(), "info": info})
        write_json(run.file("vocab.json"), tokenizer.to_dict())
        return run

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        run = cls(path)
        if not run.path.is_dir():
            raise UserError(f"{path}: no such run directory; give a directory made by `storyloom train`")
        if not run.exists():
            raise UserError(f"{path}: not a storyloom run (no config.json); give a directory made by `storyloom train`")
        return run

    def config(self) -> RunConfig:
        return RunConfig.from_dict(read_json(self.file("config.json")))

    def info(self) -> dict:
        return read_json(self.file("config.json")).get("info", {})

    def set_train_config(self, train: dict) -> None:
        d = read_json(self.file("config.json"))
        d["train"] = train
        write_json(self.file("config.json"), d)

    def tokenizer(self) -> CharTokenizer:
        return CharTokenizer.from_dict(read_json(self.file("vocab.json")))

    def save_weights(self, model: torch.nn.Module, which: str) -> None:
        save_tensors(self.file(f"{which}.safetensors"), model.state_dict())

    def load_model(self, which: str = "best", device: str | torch.device = "cpu") -> LanguageModel:
        cfg = self.config()
        tok = self.tokenizer()
        if cfg.model.vocab_size != len(tok):
            raise UserError(f"{self.path}: config.json says {cfg.model.vocab_size} characters but vocab.json has {len(tok)}; the run is damaged")
        model = LanguageModel(cfg.model)
        weights = load_tensors(self.file(f"{which}.safetensors"))
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise UserError(f"{self.file(which + '.safetensors')}: weights do not match config.json ({first}); the run is damaged") from None
        return model.to(device).eval()

    def save_trainer(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        # Tensors first: trainer.json is the commit point that says they are complete.
        save_tensors(self.file("trainer.safetensors"), tensors)
        write_json(self.file("trainer.json"), meta)

    def load_trainer(self) -> tuple[dict[str, torch.Tensor], dict]:
        meta = read_json(self.file("trainer.json"))
        return load_tensors(self.file("trainer.safetensors")), meta

    def append_metrics(self, row: dict) -> None:
        with open(self.file("metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")

    def metrics(self) -> list[dict]:
        p = self.file("metrics.jsonl")
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, step: int) -> None:
        """Drop rows logged after `step`: a resumed run logs them again."""
        rows = [r for r in self.metrics() if r["step"] <= step]
        write_atomic(self.file("metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in rows).encode())
