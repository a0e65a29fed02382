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
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from . import presets
from .clean import clean, normalize
from .config import RunConfig, override
from .corpus import build, load_prepared, prepared_dir, split
from .corpus import prepare as prepare_corpus
from .errors import UserError
from .model import LanguageModel, n_params
from .novelty import Index, codepoints, report
from .runs import Run
from .runtime import device, resolve_precision, seed_everything, set_deterministic, set_threads
from .generate import Decoder, Stops, next_words, sample
from .generate import beam as beam_search
from .sampling import SampleConfig
from .sources import BUNDLED, is_bundled, locate, read
from .train import Trainer, evaluate

LIMIT_FLAGS = ("steps", "epochs", "minutes")
# What --resume may change: when to stop and how often to checkpoint; the rest is the run.
RESUME_FLAGS = LIMIT_FLAGS + ("checkpoint_every", "checkpoint_minutes", "keep")
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
          overwrite: bool = False, progress: bool = True, **flags) -> Path:
    """Train a run (or continue one with `resume`) and return its directory.

    `flags` are the `storyloom train` flags with underscores: hidden=256,
    seq_len=100, minutes=5, val_files=("a.txt",), precision="bf16", ...
    `overwrite` replaces a run already in `out`.
    """
    flags = {k: v for k, v in flags.items() if v is not None}
    if resume is not None and overwrite:
        raise UserError("--overwrite starts a new run and --resume continues one; give only one of them")
    if resume is not None:
        run = Run.open(resume)
        cfg = run.config()
        fixed = sorted(set(flags) - set(RESUME_FLAGS))
        if fixed:
            raise UserError(f"--resume continues a run as configured; drop {', '.join('--' + f.replace('_', '-') for f in fixed)} "
                            "(only the limits --steps/--epochs/--minutes and --checkpoint-every/--checkpoint-minutes/--keep may change)")
        if set(flags) & set(LIMIT_FLAGS):  # new limits replace the old ones
            cfg.train = override(cfg.train, **{k: flags.get(k, 0) for k in LIMIT_FLAGS})
        cfg.train = override(cfg.train, **{k: v for k, v in flags.items() if k not in LIMIT_FLAGS})
        if "-" in cfg.sources and not sources:
            raise UserError(f"{resume}: this run was trained from stdin; give the text again: storyloom train - --resume {resume}")
        sources = list(sources) or list(cfg.sources)
        tokenizer = run.tokenizer()
    else:
        cfg = _configure(sources, preset, flags)
        tokenizer = None
    prep = prepared_dir(sources)
    if prep is not None:
        corpus, data = load_prepared(prep)
        if resume is None:
            fixed = sorted(k for k in set(flags) & set(presets.DATA_FLAGS) if k != "unknown")
            if fixed:
                raise UserError(f"{prep}: a prepared corpus fixes its text settings; drop "
                                f"{', '.join('--' + f.replace('_', '-') for f in fixed)} or prepare it again with them")
            if cfg.data.level != data.level:
                raise UserError(f"--preset {preset} works at {cfg.data.level} level but {prep} was prepared at {data.level} "
                                f"level; run storyloom prepare --level {cfg.data.level}, or choose another preset")
            cfg.data = data
        elif corpus.tokenizer.to_dict() != tokenizer.to_dict():
            raise UserError(f"{prep}: its vocabulary differs from the run's; resume with the corpus the run was trained on")
    else:
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
    set_deterministic(tc.deterministic)
    dev = device(tc.device)
    precision = resolve_precision(tc.precision, dev)
    seed_everything(tc.seed)
    model = LanguageModel(cfg.model).to(dev)
    if resume is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        info = {"params": n_params(model), "level": corpus.tokenizer.kind, "vocab": len(corpus.tokenizer),
                "train_chars": corpus.train_chars, "train_tokens": int(len(corpus.train)), "val_chars": corpus.val_chars,
                "val_tokens": int(len(corpus.val)),
                "train_works": corpus.train_names, "val_works": corpus.val_names, "precision": precision,
                "device": str(dev), "torch": torch.__version__}
        run = Run.create(out or Path("runs") / f"{preset}-{stamp}", cfg, corpus.tokenizer, info, overwrite)
    trainer = Trainer(model, corpus, tc, run, precision)
    if resume is not None:
        trainer.restore()
        if tc != run.config().train:  # new limits are part of the run from now on
            run.set_train_config(dataclasses.asdict(tc))
    trainer.fit(show_progress=progress)
    return run.path


def prepare(sources, out: str | Path, workers: int = 0, progress: bool = True, **flags) -> dict:
    """Clean, split and encode sources once into `out` for `train([out])`: the data flags of `train` apply.

    At character level the files are read twice (count, then encode), one at
    a time per process, on `workers` processes (0: one per core), so memory
    stays near the largest file's size whatever the corpus's.
    """
    data = _configure(sources, "default", {k: v for k, v in flags.items() if v is not None}).data
    return prepare_corpus(locate(sources), data, out, sources, workers=workers, progress=progress)


def save_samples(path: str | Path, run: str | Path, prompt: str, samples: list[dict], settings: dict) -> None:
    """Append samples, with the seed and settings that reproduce each, to a JSON-lines file."""
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    with open(path, "a") as f:
        for s in samples:
            f.write(json.dumps({"run": str(run), "prompt": prompt, **s, "settings": settings, "time": stamp}) + "\n")


def status(path: str | Path) -> dict:
    """Where a run's training stands: step, epoch, elapsed, best bpc, and why it stopped."""
    _, meta = Run.open(path).load_trainer()
    return meta["position"]


def validation_text(path: str | Path) -> str:
    """The cleaned validation text of a run, split exactly as it was trained."""
    run = Run.open(path)
    cfg = run.config()
    prep = prepared_dir(cfg.sources)
    if prep is not None:
        return run.tokenizer().decode(load_prepared(prep)[0].val)
    if "-" in cfg.sources:
        raise UserError(f"{path}: trained from stdin, so its validation text is not on disk")
    _, val = split(read(list(cfg.sources), cfg.data.encoding), cfg.data)
    return "".join(t for _, t in val)


def metrics(path: str | Path) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    return Run.open(path).metrics()


def _seed(seed: int | None) -> int:
    return seed if seed is not None else random.randrange(2**31)


def _write(w: "Writer", logits, state, recent, cfg: SampleConfig, seed: int | None, length: int,
           stops: Stops) -> Iterator[str]:
    """Sampled text for one stream, piece by piece, cut before any stop string."""
    piece = w.tokenizer.stream()
    for nxt in sample(w.decoder, logits, state, recent, cfg, [_seed(seed)], length):
        out = stops.push(piece(int(nxt[0])))
        if out:
            yield out
        if stops.done:
            return
    rest = stops.flush()
    if rest:
        yield rest


def _top_tokens(tokenizer, logits: torch.Tensor, k: int) -> list[tuple[str, float]]:
    """The k likeliest next characters under logits (1, V), with their probabilities."""
    p = torch.softmax(logits[0], -1)
    p[tokenizer.never()] = 0
    top = p.topk(min(k, logits.shape[-1]))
    return [(tokenizer.decode([i]), v) for v, i in zip(top.values.tolist(), top.indices.tolist())]


class Writer:
    """A trained run, ready to write and to score. Made by `storyloom.load`.

    Sampling arguments, shared by `generate`, `stream`, `samples` and sessions:
    temperature (0 = greedy), top_k, top_p, repetition_penalty over the last
    penalty_window characters, ban (characters never emitted), stop (strings
    that end the text, not included), beam (width of a length-normalised beam
    search, 1 being greedy; deterministic, ignores the sampling filters; 0: sample), seed.
    """

    def __init__(self, path: str | Path, which: str = "best", device_name: str = "auto", precision: str = "fp32"):
        self.run = Run.open(path)
        self.config = self.run.config()
        self.tokenizer = self.run.tokenizer()
        self.device = device(device_name)
        self.model: LanguageModel = self.run.load_model(which, self.device)
        self.precision = resolve_precision(precision, self.device)
        self.decoder = Decoder(self.model, self.device, self.precision)

    def __repr__(self) -> str:
        return f"storyloom.load({str(self.run.path)!r})"

    # -- text in ---------------------------------------------------------
    def _prepare(self, text: str) -> str:
        return clean(text, self.config.data.lowercase)

    def _encode(self, text: str, unknown: str, what: str) -> np.ndarray:
        """Ids of text typed by a person: normalised, and case-folded for a lowercase run."""
        if self.config.data.lowercase:
            text = text.lower()
        return self.tokenizer.ids(normalize(text), unknown, what)

    def _prompt(self, prompt: str, unknown: str) -> np.ndarray:
        """Prompt ids; an empty prompt starts the model as if at a new line."""
        ids = self._encode(prompt, unknown, "the prompt")
        return ids if len(ids) else self.tokenizer.primer()

    def _read(self, prompt: str, unknown: str):
        ids = self._prompt(prompt, unknown)
        logits, state = self.decoder.read(ids)
        return ids, logits, state

    def _sample_config(self, temperature=0.8, top_k=None, top_p=1.0, repetition_penalty=1.0, penalty_window=32, ban="",
                       unknown="error", stop=()) -> SampleConfig:
        banned = tuple(sorted(set(self.tokenizer.never()) | set(self.tokenizer.banned(ban, unknown) if ban else ())))
        return SampleConfig(temperature, top_k, top_p, repetition_penalty, penalty_window, banned)

    def score(self, text: str, unknown: str = "error") -> dict:
        """bpc, nats_per_char, perplexity (per character), chars, token_perplexity and tokens of `text`, read as one stream.

        bpc compares across char, word and BPE runs: see `evaluate`.
        """
        s = self.tokenizer.scored(self._prepare(text), unknown, "the text")
        if len(s.ids) < 2:
            raise UserError("the text to score needs at least two tokens")
        return evaluate(self.model, s.ids, self.precision, chars=s.chars, extra_nats=s.extra_nats)

    # -- text out --------------------------------------------------------
    def stream(self, prompt: str = "", length: int = 200, temperature: float = 0.8, top_k: int | None = None, top_p: float = 1.0,
               repetition_penalty: float = 1.0, penalty_window: int = 32, ban: str = "", stop=(), seed: int | None = None,
               beam: int = 0, unknown: str = "error") -> Iterator[str]:
        """Yield the new text piece by piece; the prompt is read once, then one LSTM step per character.

        length 0 writes until a stop string (or until the caller stops iterating), in constant memory.
        """
        check_length(length, beam, 1)
        cfg = self._sample_config(temperature, top_k, top_p, repetition_penalty, penalty_window, ban, unknown)
        ids, logits, state = self._read(prompt, unknown)
        stops = Stops(stop)
        if beam:
            decode = self.tokenizer.decode
            found = beam_search(self.decoder, logits, state, beam, length, cfg.banned,
                                lambda seq: any(s in decode(seq) for s in stops.stops))
            text = decode(found)
            hits = [text.find(s) for s in stops.stops if s in text]
            yield text[: min(hits)] if hits else text
            return
        yield from _write(self, logits, state, ids, cfg, seed, length, stops)

    def generate(self, prompt: str = "", length: int = 200, **kw) -> str:
        """The new text after `prompt` (the prompt is not repeated); the same arguments as `stream`."""
        return "".join(self.stream(prompt, length, **kw))

    def samples(self, prompt: str = "", num: int = 1, length: int = 200, temperature: float = 0.8, top_k: int | None = None,
                top_p: float = 1.0, repetition_penalty: float = 1.0, penalty_window: int = 32, ban: str = "", stop=(),
                seed: int | None = None, unknown: str = "error") -> list[dict]:
        """`num` samples drawn as one batch: [{"text": ..., "seed": ...}]; sample i uses seed + i."""
        check_length(length, 0, num)
        cfg = self._sample_config(temperature, top_k, top_p, repetition_penalty, penalty_window, ban, unknown)
        ids, logits, state = self._read(prompt, unknown)
        base = _seed(seed)
        seeds = [base + i for i in range(num)]
        stops = [Stops(stop) for _ in seeds]
        texts = [""] * num
        pieces = [self.tokenizer.stream() for _ in seeds]
        for nxt in sample(self.decoder, logits, state, ids, cfg, seeds, length):
            for i, t in enumerate(nxt.tolist()):
                if not stops[i].done:
                    texts[i] += stops[i].push(pieces[i](t))
            if all(s.done for s in stops):
                break
        return [{"text": t + s.flush(), "seed": sd} for t, s, sd in zip(texts, stops, seeds)]

    def next_chars(self, prompt: str, k: int = 5, unknown: str = "error") -> list[tuple[str, float]]:
        """The k likeliest next characters after `prompt`, with their probabilities."""
        return _top_tokens(self.tokenizer, self._read(prompt, unknown)[1], k)

    def session(self, story: str = "", unknown: str = "error") -> "Session":
        """A co-writing session over a growing story, its state cached."""
        return Session(self, story, unknown)


class Session:
    """A story written together: the model's state after the story is kept,
    so a proposal starts at once however long the story is."""

    def __init__(self, writer: Writer, story: str = "", unknown: str = "error"):
        self.writer, self.unknown = writer, unknown
        self.story = ""
        self.ids, self.logits, self.state = writer._read("", unknown)  # the new-line primer
        self.add(story)

    def add(self, text: str) -> None:
        """Append text to the story, reading only the new characters."""
        w = self.writer
        ids = w._encode(text, self.unknown, "your text")
        if len(ids):
            self.logits, self.state = w.decoder.read(ids, self.state)
            self.ids = ids[-64:]
            self.story += w.tokenizer.decode(ids)

    def propose(self, length: int = 200, seed: int | None = None, stop=(), temperature: float = 0.8, top_k: int | None = None,
                top_p: float = 1.0, repetition_penalty: float = 1.0, penalty_window: int = 32, ban: str = "") -> str:
        """A continuation of the story; the story itself is unchanged until `add`."""
        w = self.writer
        check_length(length, 0, 1)
        cfg = w._sample_config(temperature, top_k, top_p, repetition_penalty, penalty_window, ban, self.unknown)
        return "".join(_write(w, self.logits, self.state, self.ids, cfg, seed, length, Stops(stop)))

    def next_chars(self, k: int = 5) -> list[tuple[str, float]]:
        return _top_tokens(self.writer.tokenizer, self.logits, k)

    def next_words(self, k: int = 5) -> list[tuple[str, float]]:
        """The k likeliest next words: whole tokens where tokens are words or subwords, else spelled out."""
        tok = self.writer.tokenizer
        if tok.words_are_tokens:
            return _top_tokens(tok, self.logits, k)
        boundary = set(tok.boundaries())
        if not boundary:
            return []
        words = next_words(self.writer.decoder, self.logits, self.state, boundary, k)
        return [(tok.decode(ids), math.exp(lp)) for ids, lp in words]


def novelty(run: "str | Path | Writer", text: str) -> dict:
    """How much of `text` is copied verbatim from the run's training text.

    Returns longest_copied (characters), copied_text and copied_at (the
    work and offset it comes from), and novel_{10,20,50}grams: the share of
    the text's n-grams that never occur in training. The index is built on
    first use and kept in the run directory.
    """
    w = run if isinstance(run, Writer) else None
    r = w.run if w else Run.open(run)
    lowercase = (w.config if w else r.config()).data.lowercase
    text = normalize(text.lower() if lowercase else text)
    return report(Index.for_run(r), codepoints(text), text)


MAX_LENGTH = 1_000_000  # characters per sample; --length 0 streams without a limit
MAX_NUM = 4096  # samples in one batch
MAX_BEAM = 256  # beam width


def check_sampling(w: Writer, length: int, beam: int = 0, num: int = 1, unknown: str = "error", **sampling) -> None:
    """Raise UserError for absurd writing settings, before any work is done."""
    check_length(length, beam, num)
    w._sample_config(unknown=unknown, **sampling)


def check_length(length: int, beam: int, num: int) -> None:
    if not isinstance(length, int) or length < 0 or length > MAX_LENGTH:
        raise UserError(f"--length must be between 0 and {MAX_LENGTH:,} (0: until a stop string), got {length}")
    if not 0 <= beam <= MAX_BEAM:
        raise UserError(f"--beam must be between 1 and {MAX_BEAM} (or 0 for sampling), got {beam}")
    if not 1 <= num <= MAX_NUM:
        raise UserError(f"--num must be between 1 and {MAX_NUM:,}, got {num}")
    if length == 0 and (beam or num > 1):
        raise UserError("--length 0 (unbounded) works with one sample and no beam; give a --length")


def load(path: str | Path, which: str = "best", device: str = "auto", precision: str = "fp32") -> Writer:
    """Open a run directory for writing and scoring; `which` is "best" or "last", `device` auto (a CUDA GPU
    when one is visible), cpu or cuda. A run trained on either device loads on both."""
    return Writer(path, which, device, precision)
