"""Every setting, declared once: a dataclass field with its default, its help text and its checks.

Each field is one CLI flag (`hidden` -> `--hidden`): cli.py builds its flags
from these fields, presets and `compare` SPECs override them by name, and
`--resume` may change the ones marked `resume`. Every check names the flag,
so the CLI can show a config error as it is, and the Python API refuses what
the command line refuses.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import UserError

INPUTS = ("embedding", "onehot", "scalar")
PRECISIONS = ("auto", "fp32", "bf16")
DECODE_PRECISIONS = ("auto", "fp32", "bf16", "int8")
UNKNOWN = ("error", "replace")
LEVELS = ("char", "word", "bpe")
CELLS = ("lstm", "lstm-reference", "gru", "rnn", "transformer")
DEVICES = ("auto", "cpu", "cuda")
LSTM_KERNELS = ("auto", "torch", "loops")
# Beyond these a typo is likelier than a wish; each is far past what fits on the machines we target.
LIMITS = {"embed": 65_536, "hidden": 65_536, "layers": 64, "seq_len": 1_000_000, "batch_size": 1_000_000,
          "steps": 10**12, "epochs": 1e6, "minutes": 1e6, "evals": 100_000, "keep": 1_000,
          "length": 1_000_000, "beam": 256, "num": 4096}
DEFAULT_MINUTES = 10.0  # how long a run trains when no --steps, --epochs or --minutes is given
# A run with a time limit evaluates at most this share of its time (the evaluation after training aside); the
# points that would take more are dropped. On a slow machine one evaluation outlasts the gap between two: the
# default preset's 3-minute `make demo` on 2 AMD Zen 3 cores evaluated for 18 s every 18 s and took 110 steps.
# A quarter still left a default 10-minute run there a quarter short of training (16 s an evaluation, all ten made).
EVAL_SHARE = 0.1
MIN_BPE_VOCAB = 257  # the 256 byte symbols and one merge


def setting(default, help: str, group: str = "", choices: tuple[str, ...] | None = None, type=None, resume: bool = False,
            metavar: str | None = None):
    """A dataclass field that is also a CLI flag: its default, help text, choices and type live here only.

    group: the heading it is listed under in --help; resume: `--resume` may change it.
    """
    meta = {"help": help, "group": group, "choices": choices, "type": type, "resume": resume, "metavar": metavar}
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def settings(cls) -> list[dataclasses.Field]:
    """The fields of a config class that are settings (not filled in by storyloom itself)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


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
    """The network: input encoding -> sequence cell (`--cell`) -> linear head. Defaults: the `default` preset."""

    vocab_size: int = 0  # set from the tokenizer, never by hand
    input: str = setting("embedding", "how tokens enter the cell: embedding, onehot (seeds 000, 001) or scalar "
                         "(seed 003: the id scaled to [0, 1])", "model", INPUTS)
    embed: int = setting(128, "embedding width; unused by onehot and scalar inputs", "model")
    hidden: int = setting(768, "units per layer of the cell (H)", "model")
    layers: int = setting(1, "stacked layers of the cell", "model")
    dropout: float = setting(0.0, "dropout on the input, between layers and before the head", "model")
    tie: bool = setting(False, "the head reuses the embedding (a projection bridges embed != hidden)", "model")
    cell: str = setting("lstm", f"the sequence cell: {', '.join(CELLS)}", "model", CELLS)
    forget_bias: float = setting(1.0, "lstm: the forget gate's starting bias (3 keeps memories over far longer spans)", "model")
    heads: int = setting(4, "transformer: attention heads (hidden must be a multiple)", "model")
    context: int = setting(128, "transformer: tokens of carried context, and the longest piece attended at once", "model")

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

    lowercase: bool = setting(False, "fold case before training (seed 003)", "data")
    val_files: tuple[str, ...] = setting((), "validation works by file name, comma-separated", "data", metavar="A.txt,B.txt")
    val_fraction: float = setting(0.05, "else hold out this contiguous share at the end of each work", "data")
    encoding: str = setting("utf-8", "how source files are decoded", "data")
    unknown: str = setting("error", "characters never seen in training (in the validation text, or a text to score or "
                           "continue): error, or replace them", "data", UNKNOWN)
    level: str = setting("char", "tokens: char, word, or bpe (byte-level BPE)", "data", LEVELS)
    vocab_size: int = setting(2000, "bpe: the vocabulary to learn (the 256 bytes plus merges)", "data")
    max_vocab: int = setting(20000, "word: the most frequent words kept, <unk> included (0: all)", "data")
    min_count: int = setting(2, "word: rarer words become <unk>, so the model learns to predict it", "data")

    def __post_init__(self) -> None:
        self.val_files = tuple(self.val_files)
        _fraction(self, "val_fraction", lo_open=True)
        _choice(self, "unknown", UNKNOWN)
        _choice(self, "level", LEVELS)
        _positive(self, "min_count")
        _non_negative(self, "max_vocab")
        if isinstance(self.max_vocab, float) or self.max_vocab == 1:
            raise UserError(f"--max-vocab must be a whole number of at least 2 (<unk> and one word), or 0 for all; got {self.max_vocab!r}")
        v = self.vocab_size
        if isinstance(v, bool) or not isinstance(v, int) or not MIN_BPE_VOCAB <= v <= 1_000_000:
            raise UserError(f"--vocab-size must be between {MIN_BPE_VOCAB} (the 256 bytes and one merge) and 1,000,000, got {v!r}")


@dataclass
class TrainConfig:
    """The optimisation: truncated BPTT over B contiguous streams of T steps."""

    steps: int = setting(0, "stop after this many optimizer steps (0: no step limit)", "stopping", resume=True)
    epochs: float = setting(0.0, "stop after this many passes over the training text (0: no epoch limit)", "stopping",
                            resume=True)
    minutes: float = setting(0.0, f"stop after this much wall-clock time (0: no time limit; with no limit at all, "
                             f"{DEFAULT_MINUTES:g} minutes)", "stopping", resume=True)
    patience: int = setting(3, "stop after this many evaluations without improvement (0: never)", "stopping")
    seq_len: int = setting(32, "T: steps of backpropagation per batch", "optimisation")
    batch_size: int = setting(32, "B: parallel contiguous streams", "optimisation")
    lr: float = setting(8e-3, "peak AdamW learning rate", "optimisation")
    min_lr_ratio: float = setting(0.05, "the cosine ends at lr times this", "optimisation")
    warmup: int = setting(100, "linear warmup steps", "optimisation")
    weight_decay: float = setting(0.1, "AdamW decoupled weight decay, on matrices only", "optimisation")
    beta1: float = setting(0.6, "AdamW's first beta: how much of each step repeats the last (0.9 is torch's default)",
                           "optimisation")
    clip: float = setting(1.0, "gradient-norm clipping (0 disables)", "optimisation")
    average: float = setting(0.1, "evaluate, keep and write with a moving average of the weights over about this share "
                             "of the steps taken so far (0: the weights as trained)", "optimisation")
    reset_prob: float = setting(0.01, "chance per stream and batch that its carried state is zeroed", "optimisation")
    evals: int = setting(10, "validation evaluations over the run, at equal steps of progress (a --minutes run drops "
                               f"those that would take over {EVAL_SHARE:.0%} of its time)", "optimisation")
    eval_tokens: int = setting(500_000, "evaluations during training read at most this many validation tokens, a fixed "
                               "sample spread over the text (`storyloom eval` reads all)", "optimisation")
    log_every: int = setting(20, "steps between rows of metrics.jsonl", "optimisation")
    seed: int = setting(1234, "random seed", "optimisation")
    precision: str = setting("auto", "auto (bf16 where it trains faster: AMX, AMD with AVX512-BF16, recent GPUs), "
                             "fp32 or bf16", "optimisation", PRECISIONS)
    device: str = setting("auto", "auto (a CUDA GPU when one is visible), cpu or cuda", "optimisation", DEVICES)
    lstm_kernel: str = setting("auto", "how a CPU trains the lstm cell: torch (its fused kernel, oneDNN), loops "
                               "(storyloom's C++ step loops on packed weights; the same model) or auto (the faster "
                               "of the two, timed on this machine the first time a model of this size trains, and "
                               "kept)", "optimisation", LSTM_KERNELS)
    threads: int = setting(0, "CPU threads (0: one per physical core, fewer while other processes keep cores busy)",
                           "optimisation")
    checkpoint_every: int = setting(0, "also checkpoint every this many steps (0: only at evaluations and the end)",
                                    "checkpoints and faults", resume=True)
    checkpoint_minutes: float = setting(5.0, "also checkpoint after this much wall-clock time since the last (0: never)",
                                        "checkpoints and faults", resume=True)
    keep: int = setting(2, "checkpoints kept in the run (the newest ones)", "checkpoints and faults", resume=True)
    bad_steps: int = setting(5, "non-finite steps in a row before restoring the last checkpoint at half the rate",
                             "checkpoints and faults")
    deterministic: bool = setting(False, "deterministic kernels: a resumed run repeats an uninterrupted one bit for bit "
                                  "(needs --steps or --epochs)", "checkpoints and faults")
    dist_timeout: float = setting(600.0, "under torchrun: seconds a rank waits for the others in a collective before "
                                  "it stops with an error", "checkpoints and faults", resume=True)

    def __post_init__(self) -> None:
        _positive(self, "seq_len", "batch_size", "evals", "eval_tokens", "log_every", "keep", "bad_steps")
        _non_negative(self, "steps", "epochs", "minutes", "warmup", "weight_decay", "clip", "patience", "threads",
                      "checkpoint_every", "checkpoint_minutes")
        if not (isinstance(self.dist_timeout, (int, float)) and 1 <= self.dist_timeout <= 86_400):
            raise UserError(f"--dist-timeout must be between 1 and 86400 seconds, got {self.dist_timeout!r}")
        _at_most(self, "seq_len", "batch_size", "steps", "epochs", "minutes", "evals", "keep")
        if self.deterministic and self.minutes:
            raise UserError("--deterministic needs --steps or --epochs, not --minutes: a wall-clock limit makes the "
                            "learning-rate schedule depend on timing")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise UserError(f"--lr must be in (0, 1), got {self.lr!r}")
        _fraction(self, "reset_prob")
        _fraction(self, "beta1")
        if isinstance(self.average, bool) or not isinstance(self.average, (int, float)) or not 0 <= self.average <= 1:
            raise UserError(f"--average must be in [0, 1] (0: no average), got {self.average!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        _choice(self, "precision", PRECISIONS)
        _choice(self, "device", DEVICES)
        _choice(self, "lstm_kernel", LSTM_KERNELS)

    @property
    def limited(self) -> bool:
        return bool(self.steps or self.epochs or self.minutes)


RESUMABLE = tuple(f.name for f in settings(TrainConfig) if f.metadata["resume"])  # what --resume may change


@dataclass
class SampleConfig:
    """How each next token is chosen when writing. Filters apply in this order: ban, repetition penalty,
    temperature, top-k, top-p."""

    temperature: float = setting(0.8, "0 is greedy (argmax); 1 samples the model's distribution; higher is wilder", "sampling")
    top_k: int | None = setting(None, "sample only from the k likeliest tokens (default: all)", "sampling", type=int)
    top_p: float = setting(1.0, "sample only from the smallest set of tokens with this much probability", "sampling")
    repetition_penalty: float = setting(1.0, "> 1 discourages tokens used in the last --penalty-window", "sampling")
    penalty_window: int = setting(32, "tokens the repetition penalty looks back over", "sampling")
    ban: str = setting("", "characters never to write", "sampling", metavar="CHARS")
    stop: tuple[str, ...] = setting((), "end before this string, which is not written (repeatable)", "sampling",
                                    metavar="STRING")

    def __post_init__(self) -> None:
        self.stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature < float("inf"):
            raise UserError(f"--temperature must be a number >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1):
            raise UserError(f"--top-k must be >= 1 (leave it out to keep every character), got {self.top_k}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.repetition_penalty, (int, float)) or not self.repetition_penalty >= 1:
            raise UserError(f"--repetition-penalty must be >= 1, got {self.repetition_penalty}")
        if isinstance(self.penalty_window, bool) or not isinstance(self.penalty_window, int) or self.penalty_window < 1:
            raise UserError(f"--penalty-window must be >= 1, got {self.penalty_window}")
        if not isinstance(self.ban, str) or not all(isinstance(x, str) for x in self.stop):
            raise UserError("--ban takes a string of characters and --stop strings")

    @property
    def lookback(self) -> int:
        """Tokens the repetition penalty looks back over: 0 when there is no penalty."""
        return self.penalty_window if self.repetition_penalty != 1.0 else 0

    @classmethod
    def of(cls, base: "SampleConfig | None" = None, **changes) -> "SampleConfig":
        """base (or the defaults) with some settings replaced; an unknown name is one clear error."""
        return override(base or cls(), **changes)


@dataclass
class GenerateConfig:
    """How much to write, and how."""

    length: int = setting(200, "new tokens to write (0: until a stop string or Ctrl-C)", "writing")
    beam: int = setting(0, "beam search of this width instead of sampling (deterministic; 1 is greedy; 0 samples)",
                        "writing")
    num: int = setting(1, "write this many samples as one batch, sample i seeded with seed + i", "writing")

    def __post_init__(self) -> None:
        L = LIMITS
        if isinstance(self.length, bool) or not isinstance(self.length, int) or not 0 <= self.length <= L["length"]:
            raise UserError(f"--length must be between 0 and {L['length']:,} (0: until a stop string), got {self.length}")
        if isinstance(self.beam, bool) or not isinstance(self.beam, int) or not 0 <= self.beam <= L["beam"]:
            raise UserError(f"--beam must be between 1 and {L['beam']} (or 0 for sampling), got {self.beam}")
        if isinstance(self.num, bool) or not isinstance(self.num, int) or not 1 <= self.num <= L["num"]:
            raise UserError(f"--num must be between 1 and {L['num']:,}, got {self.num}")
        if self.length == 0 and (self.beam or self.num > 1):
            raise UserError("--length 0 (unbounded) works with one sample and no beam; give a --length")


@dataclass
class LoadConfig:
    """How a trained run is opened for writing and scoring."""

    which: str = setting("best", "the weights: best (lowest validation bpc; the moving average, with --average) or last "
                         "(the newest checkpoint's, as trained)", "run", ("best", "last"))
    device: str = setting("auto", "auto (a CUDA GPU when one is visible), cpu or cuda", "run", DEVICES)
    precision: str = setting("fp32", "fp32 (exact), bf16 or auto (bf16 where native)", "run", PRECISIONS)
    threads: int = setting(0, "CPU threads (0: one per physical core, fewer while other processes keep cores busy)", "run")
    decode_precision: str = setting("auto", "how the step that writes token by token holds the weights: fp32 (exact), "
                                    "bf16, int8 (CPU: a quarter of the bytes, faster), or auto (int8 on a CPU, fp32 on a "
                                    "GPU; scores stay exact). Other than fp32, prompts are read in bf16 where native; "
                                    "given by name, scores go through that step too", "run", DECODE_PRECISIONS)

    def __post_init__(self) -> None:
        _non_negative(self, "threads")
        _choice(self, "which", ("best", "last"))
        _choice(self, "device", DEVICES)
        _choice(self, "precision", PRECISIONS)
        _choice(self, "decode_precision", DECODE_PRECISIONS)


@dataclass
class AdaptConfig:
    """Dynamic evaluation (Krause et al., 2018): the model keeps learning from the text it reads."""

    segment: int = setting(64, "tokens read between two gradient steps", "dynamic evaluation")
    adapt_lr: float = setting(0.1, "the step's learning rate (plain SGD on each segment's mean loss)", "dynamic evaluation")
    adapt_decay: float = setting(0.0, "each step also pulls the weights this fraction of the way back to the trained ones "
                                 "(0: plain SGD)", "dynamic evaluation")

    def __post_init__(self) -> None:
        _positive(self, "segment")
        if not (isinstance(self.adapt_lr, (int, float)) and 0 < self.adapt_lr < 10):
            raise UserError(f"--adapt-lr must be in (0, 10), got {self.adapt_lr!r}")
        if not (isinstance(self.adapt_decay, (int, float)) and 0 <= self.adapt_decay <= 1):
            raise UserError(f"--adapt-decay must be in [0, 1], got {self.adapt_decay!r}")


@dataclass
class ServeConfig:
    """How `storyloom serve` listens and what one request may ask for."""

    host: str = setting("127.0.0.1", "address to listen on (loopback by default: only this machine can connect)", "server")
    port: int = setting(8000, "TCP port", "server")
    api_key: str = setting("", "require `Authorization: Bearer KEY` on every /v1 route (default: none)", "server",
                           metavar="KEY")
    max_batch: int = setting(64, "streams written together in one batched step; more requests wait their turn", "server")
    max_tokens: int = setting(4096, "the most tokens (characters at char level) one completion may ask for", "server")
    max_prompt_chars: int = setting(100_000, "the longest prompt (or text to score) a request may send", "server")
    grace: float = setting(10.0, "seconds running streams may finish after SIGTERM", "server")

    def __post_init__(self) -> None:
        _positive(self, "max_batch", "max_tokens", "max_prompt_chars")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise UserError(f"--port must be in 0..65535 (0: any free port), got {self.port!r}")
        if not isinstance(self.grace, (int, float)) or self.grace < 0:
            raise UserError(f"--grace must be >= 0 seconds, got {self.grace!r}")


# Settings added after runs were saved, with the value those runs trained with: an older config.json that lacks
# one reports that, not today's default (its checkpoints carry the optimizer's own betas when it resumes).
SAVED_BEFORE = {"beta1": 0.9}


@dataclass
class RunConfig:
    """Everything a run was made from: saved as config.json in the run."""

    preset: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sources: tuple[str, ...] = ()
    base: dict = field(default_factory=dict)  # the run fine-tuned from (--init): {"path", "manifest_sha256"}; {} if none

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        try:
            return cls(
                preset=d["preset"],
                model=ModelConfig(**d["model"]),
                data=DataConfig(**d["data"]),
                train=TrainConfig(**{**SAVED_BEFORE, **d["train"]}),
                sources=tuple(d.get("sources", ())),
                base=dict(d.get("base") or {}),
            )
        except (KeyError, TypeError) as e:
            raise UserError(f"config.json does not describe a storyloom run ({e}); point at a run directory made by `storyloom train`") from None


def override(cfg, **values):
    """A copy of a config dataclass with some fields replaced, validated again."""
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = set(values) - names
    if unknown:
        raise UserError(f"unknown setting {', '.join(sorted(unknown))} (the settings here: {', '.join(sorted(names))})")
    return dataclasses.replace(cfg, **values)
