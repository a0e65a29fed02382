"""Configuration dataclasses that validate themselves.

Every field maps to one CLI flag (`hidden` -> `--hidden`), and every check
names that flag, so the CLI can show a config error as it is.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import UserError

INPUTS = ("embedding", "onehot", "scalar")
PRECISIONS = ("auto", "fp32", "bf16")
UNKNOWN = ("error", "replace")
LEVELS = ("char", "word", "bpe")
CELLS = ("lstm", "lstm-reference", "gru", "rnn", "transformer")
DEVICES = ("auto", "cpu", "cuda")
# Beyond these a typo is likelier than a wish; each is far past what fits on the machines we target.
LIMITS = {"embed": 65_536, "hidden": 65_536, "layers": 64, "seq_len": 1_000_000, "batch_size": 1_000_000,
          "steps": 10**12, "epochs": 1e6, "minutes": 1e6, "evals": 100_000, "keep": 1_000}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _positive(obj, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"{flag(n)} must be a positive integer, got {v!r}")


def _non_negative(obj, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise UserError(f"{flag(n)} must be a number >= 0, got {v!r}")


def _at_most(obj, *names: str) -> None:
    for n in names:
        if getattr(obj, n) > LIMITS[n]:
            raise UserError(f"{flag(n)} must be at most {LIMITS[n]:,}, got {getattr(obj, n)!r}")


def _fraction(obj, name: str, lo_open: bool = False) -> None:
    v = getattr(obj, name)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (0 < v < 1 if lo_open else 0 <= v < 1)
    if not ok:
        bound = "(0, 1)" if lo_open else "[0, 1)"
        raise UserError(f"{flag(name)} must be in {bound}, got {v!r}")


def _choice(obj, name: str, choices: tuple[str, ...]) -> None:
    v = getattr(obj, name)
    if v not in choices:
        raise UserError(f"{flag(name)} must be one of {', '.join(choices)}, got {v!r}")


@dataclass
class ModelConfig:
    """The network: input encoding -> stacked LSTM -> linear head."""

    vocab_size: int = 0  # set from the tokenizer, never by hand
    input: str = "embedding"  # embedding | onehot (seeds 000, 001) | scalar (seed 003: id / (V-1))
    embed: int = 128  # embedding width; unused by onehot and scalar inputs
    hidden: int = 512  # LSTM units per layer (H)
    layers: int = 2  # stacked LSTM layers
    dropout: float = 0.1  # on the input, between layers and before the head
    tie: bool = False  # the head reuses the embedding (through a projection when embed != hidden)
    cell: str = "lstm"  # lstm | lstm-reference | gru | rnn | transformer
    forget_bias: float = 1.0  # lstm: the forget gate's starting bias (3 keeps memories over far longer spans)
    heads: int = 4  # transformer: attention heads (hidden must be a multiple)
    context: int = 128  # transformer: tokens of carried context, and the longest piece attended at once

    def __post_init__(self) -> None:
        _choice(self, "input", INPUTS)
        _choice(self, "cell", CELLS)
        _positive(self, "heads", "context")
        if isinstance(self.forget_bias, bool) or not isinstance(self.forget_bias, (int, float)) or not -20 <= self.forget_bias <= 20:
            raise UserError(f"--forget-bias must be a number between -20 and 20, got {self.forget_bias!r}")
        if self.cell == "transformer" and self.hidden % self.heads:
            raise UserError(f"--hidden {self.hidden} must be a multiple of --heads {self.heads} for the transformer")
        if self.tie and self.input != "embedding":
            raise UserError(f"--tie shares the embedding with the head, so it needs --input embedding, not {self.input}")
        _positive(self, "embed", "hidden", "layers")
        _at_most(self, "embed", "hidden", "layers")
        _fraction(self, "dropout")
        if self.vocab_size < 0:
            raise UserError(f"vocab_size must be >= 0, got {self.vocab_size}")

    @property
    def input_size(self) -> int:
        return {"embedding": self.embed, "onehot": self.vocab_size, "scalar": 1}[self.input]


@dataclass
class DataConfig:
    """What the model sees and how validation text is held out."""

    lowercase: bool = False  # fold case before training (seed 003)
    val_files: tuple[str, ...] = ()  # validation works, matched by file name
    val_fraction: float = 0.05  # else: this contiguous share at the end of each work
    encoding: str = "utf-8"  # how source files are decoded
    unknown: str = "error"  # unseen characters in evaluated text: error | replace
    level: str = "char"  # tokens: char | word | bpe
    vocab_size: int = 2000  # bpe: the vocabulary to learn (the 256 bytes plus merges)
    max_vocab: int = 20000  # word: the most frequent words kept, <unk> included (0: all)
    min_count: int = 2  # word: rarer words become <unk>, so the model learns to predict it

    def __post_init__(self) -> None:
        self.val_files = tuple(self.val_files)
        _fraction(self, "val_fraction", lo_open=True)
        _choice(self, "unknown", UNKNOWN)
        _choice(self, "level", LEVELS)
        _positive(self, "min_count")
        _non_negative(self, "max_vocab")
        if isinstance(self.max_vocab, float) or self.max_vocab == 1:
            raise UserError(f"--max-vocab must be a whole number of at least 2 (<unk> and one word), or 0 for all; got {self.max_vocab!r}")
        if isinstance(self.vocab_size, bool) or not isinstance(self.vocab_size, int) or not 257 <= self.vocab_size <= 1_000_000:
            raise UserError(f"--vocab-size must be between 257 (the 256 bytes and one merge) and 1,000,000, got {self.vocab_size!r}")


@dataclass
class TrainConfig:
    """The optimisation: truncated BPTT over B contiguous streams of T steps."""

    seq_len: int = 64  # T: steps of backpropagation per batch
    batch_size: int = 32  # B: parallel contiguous streams
    lr: float = 4e-3  # peak AdamW learning rate
    min_lr_ratio: float = 0.05  # cosine decays to lr * this
    warmup: int = 100  # linear warmup steps
    weight_decay: float = 0.01  # AdamW decoupled decay on matrices only
    clip: float = 1.0  # gradient-norm clipping (0 disables)
    reset_prob: float = 0.01  # chance per stream and batch that its carried state is zeroed
    steps: int = 0  # stop after this many steps (0: no step limit)
    epochs: float = 0.0  # stop after this many passes (0: no epoch limit)
    minutes: float = 0.0  # stop after this much wall-clock time (0: no limit)
    evals: int = 10  # evaluate this many times over the run (at equal progress)
    eval_tokens: int = 500_000  # evaluations during training read at most this many validation tokens
    patience: int = 3  # stop after this many evaluations without improvement (0: never)
    log_every: int = 20  # steps between lines in metrics.jsonl
    seed: int = 1234
    precision: str = "auto"  # auto | fp32 | bf16
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads (0: all physical cores)
    checkpoint_every: int = 0  # also checkpoint every this many steps (0: only at evaluations and the end)
    checkpoint_minutes: float = 5.0  # also checkpoint after this much wall-clock time since the last (0: never)
    keep: int = 2  # checkpoints kept in the run (the newest ones)
    bad_steps: int = 5  # non-finite steps in a row before restoring the last good checkpoint
    deterministic: bool = False  # deterministic kernels: a resumed run repeats an uninterrupted one bit for bit

    def __post_init__(self) -> None:
        _positive(self, "seq_len", "batch_size", "evals", "eval_tokens", "log_every", "keep", "bad_steps")
        _non_negative(self, "steps", "epochs", "minutes", "warmup", "weight_decay", "clip", "patience", "threads",
                      "checkpoint_every", "checkpoint_minutes")
        _at_most(self, "seq_len", "batch_size", "steps", "epochs", "minutes", "evals", "keep")
        if self.deterministic and self.minutes:
            raise UserError("--deterministic needs --steps or --epochs, not --minutes: a wall-clock limit makes the "
                            "learning-rate schedule depend on timing")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise UserError(f"--lr must be in (0, 1), got {self.lr!r}")
        _fraction(self, "reset_prob")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        _choice(self, "precision", PRECISIONS)
        _choice(self, "device", DEVICES)

    @property
    def limited(self) -> bool:
        return bool(self.steps or self.epochs or self.minutes)


@dataclass
class RunConfig:
    """Everything a run was made from: saved as config.json in the run."""

    preset: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sources: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        try:
            return cls(
                preset=d["preset"],
                model=ModelConfig(**d["model"]),
                data=DataConfig(**d["data"]),
                train=TrainConfig(**d["train"]),
                sources=tuple(d.get("sources", ())),
            )
        except (KeyError, TypeError) as e:
            raise UserError(f"config.json does not describe a storyloom run ({e}); point at a run directory made by `storyloom train`") from None


def override(cfg, **values):
    """A copy of a config dataclass with some fields replaced, validated again."""
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = set(values) - names
    if unknown:
        raise UserError(f"unknown setting {', '.join(sorted(unknown))}")
    return dataclasses.replace(cfg, **values)
