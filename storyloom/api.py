"""The Python API: what people, the CLI and (later) the server call.

    import storyloom
    path = storyloom.train(["mybook.txt"], minutes=5)
    m = storyloom.load(path)
    print(m.generate("Once upon a time", length=200, seed=1))
    m.score(open("other.txt").read())   # {'bpc': ..., 'nats_per_char': ..., ...}
"""

from __future__ import annotations

import dataclasses
import datetime
import random
from collections.abc import Iterator
from pathlib import Path

import torch

from . import presets
from .clean import clean
from .config import RunConfig, override
from .corpus import build
from .errors import UserError
from .model import LanguageModel, n_params
from .runs import Run
from .runtime import autocast, device, resolve_precision, seed_everything, set_threads
from .sampling import choose
from .sources import BUNDLED, is_bundled, read
from .train import Trainer, evaluate

LIMIT_FLAGS = ("steps", "epochs", "minutes")
DEFAULT_MINUTES = 10.0


def clean_sources(sources=(), lowercase: bool = False, encoding: str = "utf-8") -> str:
    """What the model would see of these sources: cleaned and concatenated."""
    return "".join(clean(d.text, lowercase) for d in read(sources, encoding))


def _configure(sources, preset: str, flags: dict) -> RunConfig:
    cfg = presets.build(preset, flags)
    bundled = is_bundled(list(sources))
    if bundled and flags.get("val_files") is None and flags.get("val_fraction") is None:
        # The bundled corpus always trains on its fixed benchmark split unless told otherwise.
        cfg.data.val_files = BUNDLED[bundled]
    if not cfg.train.limited:
        cfg.train.minutes = DEFAULT_MINUTES
    # Paths are stored absolute so --resume finds them from any directory.
    cfg.sources = tuple(s if s == "-" or not Path(s).exists() else str(Path(s).resolve()) for s in sources)
    return cfg


def train(sources=(), *, out: str | Path | None = None, preset: str = "default", resume: str | Path | None = None,
          progress: bool = True, **flags) -> Path:
    """Train a run (or continue one with `resume`) and return its directory.

    `flags` are the `storyloom train` flags with underscores: hidden=256,
    seq_len=100, minutes=5, val_files=("a.txt",), precision="bf16", ...
    """
    flags = {k: v for k, v in flags.items() if v is not None}
    if resume is not None:
        run = Run.open(resume)
        cfg = run.config()
        fixed = sorted(set(flags) - set(LIMIT_FLAGS))
        if fixed:
            raise UserError(f"--resume continues a run as configured; drop {', '.join('--' + f.replace('_', '-') for f in fixed)} (only --steps, --epochs and --minutes may change)")
        if flags:
            cfg.train = override(cfg.train, **{k: flags.get(k, 0) for k in LIMIT_FLAGS})
        if "-" in cfg.sources and not sources:
            raise UserError(f"{resume}: this run was trained from stdin; give the text again: storyloom train - --resume {resume}")
        sources = list(sources) or list(cfg.sources)
        tokenizer = run.tokenizer()
    else:
        cfg = _configure(sources, preset, flags)
        tokenizer = None
    corpus = build(read(sources, cfg.data.encoding), cfg.data, tokenizer)
    tc = cfg.train
    need = tc.batch_size * tc.seq_len + 1
    if len(corpus.train) < need:
        raise UserError(
            f"the training text has {len(corpus.train)} characters, fewer than one batch needs "
            f"({tc.batch_size}x{tc.seq_len}+1 = {need}); give more text or lower --batch-size / --seq-len"
        )
    cfg.model.vocab_size = len(corpus.tokenizer)
    set_threads(tc.threads)
    dev = device(tc.device)
    precision = resolve_precision(tc.precision, dev)
    seed_everything(tc.seed)
    model = LanguageModel(cfg.model).to(dev)
    if resume is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        info = {"params": n_params(model), "train_chars": int(len(corpus.train)), "val_chars": corpus.val_chars,
                "train_works": corpus.train_names, "val_works": corpus.val_names, "precision": precision,
                "device": str(dev), "torch": torch.__version__}
        run = Run.create(out or Path("runs") / f"{preset}-{stamp}", cfg, corpus.tokenizer, info)
    trainer = Trainer(model, corpus.train, corpus.val, tc, run, precision)
    if resume is not None:
        trainer.restore()
        if tc != run.config().train:  # new limits are part of the run from now on
            run.set_train_config(dataclasses.asdict(tc))
    trainer.fit(show_progress=progress)
    return run.path


def metrics(path: str | Path) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    return Run.open(path).metrics()


class Writer:
    """A trained run, ready to write and to score. Made by `storyloom.load`."""

    def __init__(self, path: str | Path, which: str = "best", device_name: str = "cpu", precision: str = "fp32"):
        self.run = Run.open(path)
        self.config = self.run.config()
        self.tokenizer = self.run.tokenizer()
        self.device = device(device_name)
        self.model: LanguageModel = self.run.load_model(which, self.device)
        self.precision = resolve_precision(precision, self.device)

    def __repr__(self) -> str:
        return f"storyloom.load({str(self.run.path)!r})"

    def _prepare(self, text: str) -> str:
        return clean(text, self.config.data.lowercase)

    def score(self, text: str, unknown: str = "error") -> dict:
        """bpc, nats_per_char, perplexity and chars of `text`, read as one stream."""
        ids = self.tokenizer.encode(self._prepare(text), unknown, "the text")
        if len(ids) < 2:
            raise UserError("the text to score needs at least two characters")
        return evaluate(self.model, ids, self.precision)

    @torch.no_grad()
    def stream(self, prompt: str = "", length: int = 200, temperature: float = 0.8, seed: int | None = None,
               unknown: str = "error") -> Iterator[str]:
        """Yield new characters one at a time; the prompt is read once, then one LSTM step each."""
        if temperature < 0:
            raise UserError(f"--temperature must be >= 0, got {temperature}")
        if length < 0:
            raise UserError(f"--length must be >= 0, got {length}")
        prompt = self.config.data.lowercase and prompt.lower() or prompt
        ids = self.tokenizer.encode(prompt, unknown, "the prompt")
        if not len(ids):  # an empty prompt starts the model as if at a new line
            ids = self.tokenizer.encode("\n" if "\n" in self.tokenizer.chars else self.tokenizer.chars[0])
        gen = torch.Generator().manual_seed(seed if seed is not None else random.randrange(2**31))
        x = torch.from_numpy(ids.astype("int64"))[None].to(self.device)  # (1, P)
        state = None
        for _ in range(length):
            with autocast(self.precision, self.device):
                logits, state = self.model(x, state)  # (1, t, V)
            nxt = choose(logits[:, -1].float().cpu(), temperature, gen)  # (1,)
            yield self.tokenizer.decode(nxt.numpy())
            x = nxt[None].to(self.device)  # (1, 1)

    def generate(self, prompt: str = "", length: int = 200, temperature: float = 0.8, seed: int | None = None,
                 unknown: str = "error") -> str:
        """The new text after `prompt` (the prompt itself is not repeated)."""
        return "".join(self.stream(prompt, length, temperature, seed, unknown))


def load(path: str | Path, which: str = "best", device: str = "cpu", precision: str = "fp32") -> Writer:
    """Open a run directory for writing and scoring; `which` is "best" or "last"."""
    return Writer(path, which, device, precision)
