"""A trained run, open for writing and scoring: `Writer` (what `storyloom.load` returns) and `Session`.

    m = storyloom.load("runs/mybook")
    m.generate("It was a dark night", length=200, temperature=0.8, seed=1)
    m.score(text)                       # bpc, nats_per_char, perplexity, chars, token_perplexity, tokens
    s = m.session("Once upon a time")   # co-writing over a growing story, its state cached

Every sampling keyword (temperature, top_k, top_p, repetition_penalty,
penalty_window, ban, stop) is a field of `SampleConfig`, where its default
and its checks live; a method takes them as keywords, or one `sampling=`
config. The CLI, co-writing, inspection and the server use the public
methods here: `encode`, `read`, `banned`, `draw_seed`.
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

from .clean import clean, normalize
from .config import AdaptConfig, DataConfig, GenerateConfig, LoadConfig, SampleConfig
from .decoding import Decoder, Stops, next_words, sample
from .decoding import beam as beam_search
from .errors import UserError
from .model import LanguageModel, State, layers
from .runs import Run
from .runtime import device as pick_device
from .runtime import resolve_precision, set_threads
from .train import adapt as adapt_to
from .train import evaluate


def draw_seed(seed: int | None = None) -> int:
    """The seed to write with: the one given, or a fresh one (to be shown, so the text can be made again)."""
    return seed if seed is not None else random.randrange(2**31)


def load_model(run: Run, which: str = "best", device: torch.device | str = "cpu") -> LanguageModel:
    """The run's network with its best (or last checkpoint's) weights, in eval mode."""
    cfg, tok = run.config(), run.tokenizer()
    if cfg.model.vocab_size != len(tok):
        raise UserError(f"{run.path}: config.json says {cfg.model.vocab_size} tokens but vocab.json has {len(tok)}; "
                        "the run is damaged")
    where, weights = run.weights(which)
    model = LanguageModel(cfg.model)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{where}: weights do not match config.json ({first}); the run is damaged") from None
    return model.to(device).eval()


class Writer:
    """A trained run, ready to write and to score. Made by `storyloom.load`.

    Sampling keywords, shared by `generate`, `stream`, `samples` and
    sessions: see `SampleConfig` (temperature 0 is greedy; stop strings end
    the text and are not included). `beam` is the width of a length-normalised
    beam search (1 is greedy; deterministic, ignores the sampling filters; 0
    samples); `seed` makes the text reproducible.
    """

    def __init__(self, path: str | Path, which: str = LoadConfig.which, device: str = LoadConfig.device,
                 precision: str = LoadConfig.precision, threads: int = LoadConfig.threads,
                 decode_precision: str = LoadConfig.decode_precision):
        opts = LoadConfig(which, device, precision, threads, decode_precision)
        set_threads(opts.threads)
        self.run = Run.open(path)
        self.config = self.run.config()
        self.tokenizer = self.run.tokenizer()
        self.device = pick_device(opts.device)
        self.model: LanguageModel = load_model(self.run, opts.which, self.device)
        self.precision = resolve_precision(opts.precision, self.device)
        self.decode = self._decode_precision(opts.decode_precision)
        # Scoring goes through the writing step only when asked by name: by default a score is the exact one.
        self.scored_by = None if opts.decode_precision in ("auto", "fp32") else self.decode
        # Writing in int8 or bf16 is not exact anyway, so the prompt is read in int8 too (FBGEMM's quantised LSTM,
        # on every CPU: 40 ms for 1,000 characters against 87 in bf16 with AMX and about 190 in fp32), or for a bf16
        # step in bf16 where the CPU has it natively. fp32 keeps the whole path exact.
        read = {"fp32": self.precision, "int8": "int8"}.get(self.decode) or resolve_precision("auto", self.device)
        self.decoder = Decoder(self.model, self.device, read, decode=self.decode)

    def _decode_precision(self, asked: str) -> str:
        """auto: int8 where the cell and the device have it (measured 3.9x fp32 at batch 1 on Intel with AMX, within
        0.0002 bpc: benchmarks/README.md, "Batch-1 writing"), else fp32 (a GPU's step is a captured graph)."""
        have = self.model.cell.precisions
        if asked == "auto":
            return "int8" if self.device.type == "cpu" and "int8" in have else "fp32"
        if asked not in have:
            raise UserError(f"--decode-precision {asked}: the {self.config.model.cell} cell steps only in "
                            f"{', '.join(have)}; drop the flag")
        if asked == "int8" and self.device.type != "cpu":
            raise UserError("--decode-precision int8 runs on the CPU; on a GPU use fp32 or bf16 (or --device cpu)")
        return asked

    def __repr__(self) -> str:
        return f"storyloom.load({str(self.run.path)!r})"

    def info(self) -> dict:
        """What the run is, at a glance: its layers (output shape, parameters), the total, level and vocabulary,
        preset and settings, how far training got and why it stopped, the best val bpc, its files and their sizes."""
        run, cfg = self.run, self.config
        try:
            pos = dataclasses.asdict(run.latest().position())
        except UserError:  # no checkpoint: weights only
            pos = {}
        vals = [r["val_bpc"] for r in run.metrics() if "val_bpc" in r]
        files = sorted((str(p.relative_to(run.path)), p.stat().st_size) for p in run.path.rglob("*") if p.is_file())
        rows = layers(self.model)
        return {"run": str(run.path), "preset": cfg.preset, "level": self.tokenizer.kind, "vocab": len(self.tokenizer),
                "layers": rows, "params": sum(r["params"] for r in rows), "config": dataclasses.asdict(cfg),
                "trained_on": {k: v for k, v in run.info().items() if k in ("train_chars", "val_chars", "train_works",
                                                                              "val_works", "device", "precision", "ranks")},
                "training": {k: pos.get(k) for k in ("step", "epoch", "elapsed", "stopped", "skipped")},
                "best_val_bpc": min(vals) if vals else None, "base": cfg.base or None, "decode_precision": self.decode,
                "files": [{"name": n, "bytes": b} for n, b in files]}

    # -- text in ---------------------------------------------------------
    def clean(self, text: str) -> str:
        """Text as the run's training text was: cleaned (Gutenberg boilerplate, newlines, NFC) and case-folded if it was."""
        return clean(text, self.config.data.lowercase)

    def encode(self, text: str, unknown: str = DataConfig.unknown, what: str = "the text") -> np.ndarray:
        """Ids of text a person typed: normalised, and case-folded for a lowercase run."""
        if self.config.data.lowercase:
            text = text.lower()
        return self.tokenizer.ids(normalize(text), unknown, what)

    def prompt_ids(self, prompt: str, unknown: str = DataConfig.unknown, what: str = "the prompt") -> np.ndarray:
        """The ids a prompt is read as: an empty prompt starts the model as at a new line (the tokenizer's primer)."""
        ids = self.encode(prompt, unknown, what)
        return ids if len(ids) else self.tokenizer.primer()

    def read(self, prompt: str, unknown: str = DataConfig.unknown, state: State | None = None):
        """(ids, logits, state) after reading `prompt` in one call; an empty prompt starts as at a new line."""
        ids = self.prompt_ids(prompt, unknown) if state is None else self.encode(prompt, unknown, "the prompt")
        if not len(ids):
            raise UserError("nothing to read: the text is empty")
        logits, state = self.decoder.read(ids, state)
        return ids, logits, state

    def banned(self, ban: str = "", unknown: str = DataConfig.unknown) -> tuple[int, ...]:
        """Ids never to write: the tokenizer's own (<unk>) and the characters of `ban`."""
        return tuple(sorted(set(self.tokenizer.never()) | set(self.tokenizer.banned(ban, unknown) if ban else ())))

    def score(self, text: str, unknown: str = DataConfig.unknown, dynamic: bool = False,
              adapting: AdaptConfig | None = None) -> dict:
        """bpc, nats_per_char, perplexity (per character), chars, token_perplexity and tokens of `text`, read as one stream.

        bpc compares across char, word and BPE runs: see `evaluate`. With `dynamic`, also "dynamic": the same
        figures when the model keeps learning from the text as it reads it (train.adapt; settings in `adapting`),
        beside the static ones, never instead; the run's weights do not change.
        """
        s = self.tokenizer.scored(self.clean(text), unknown, "the text")
        if len(s.ids) < 2:
            raise UserError("the text to score needs at least two tokens")
        r = evaluate(self.model, s.ids, self.precision, chars=s.chars, extra_nats=s.extra_nats, stepped=self.scored_by)
        if self.scored_by:
            r["decode_precision"] = self.scored_by
        if dynamic:
            cfg = adapting or AdaptConfig()
            _, nats, n, _, _ = adapt_to(self.model, s.ids, cfg, self.precision)
            per_char = (nats + s.extra_nats) / s.chars
            r["dynamic"] = {"bpc": per_char / math.log(2), "nats_per_char": per_char, "perplexity": math.exp(per_char),
                            "tokens": n, **dataclasses.asdict(cfg),
                            "method": "SGD on each segment" + (", decayed toward the trained weights" if cfg.adapt_decay else "")}
        return r

    # -- text out --------------------------------------------------------
    def stream(self, prompt: str = "", length: int = GenerateConfig.length, *, seed: int | None = None, beam: int = 0,
               unknown: str = DataConfig.unknown, sampling: SampleConfig | None = None, adapt: bool = False,
               adapting: AdaptConfig | None = None, **settings) -> Iterator[str]:
        """Yield the new text piece by piece; the prompt is read once, then one step per token.

        length 0 writes until a stop string (or until the caller stops iterating), in constant memory. With
        `adapt`, the prompt is read as dynamic evaluation reads a text (learning from it segment by segment, on a
        copy of the model) and the adapted copy writes: a long prompt in a new style is followed more closely.
        """
        GenerateConfig(length=length, beam=beam)
        cfg = SampleConfig.of(sampling, **settings)
        banned = self.banned(cfg.ban, unknown)
        if adapt:
            ids = self.encode(prompt, unknown, "the prompt")
            if len(ids) < 2:
                raise UserError("--adapt needs a prompt of at least two tokens to learn from")
            model, _, _, state, logits = adapt_to(self.model, ids, adapting or AdaptConfig(), self.precision)
            decoder = Decoder(model, self.device, self.decoder.precision, decode=self.decode)
        else:
            (ids, logits, state), decoder = self.read(prompt, unknown), self.decoder
        if beam:
            yield self._beam(logits, state, beam, length, banned, cfg.stop, decoder)
            return
        yield from self._write(logits, state, ids, cfg, banned, seed, length, decoder)

    def generate(self, prompt: str = "", length: int = GenerateConfig.length, **kw) -> str:
        """The new text after `prompt` (the prompt is not repeated); the same arguments as `stream`."""
        return "".join(self.stream(prompt, length, **kw))

    def samples(self, prompt: str = "", num: int = GenerateConfig.num, length: int = GenerateConfig.length, *,
                seed: int | None = None, unknown: str = DataConfig.unknown, sampling: SampleConfig | None = None,
                **settings) -> list[dict]:
        """`num` samples drawn as one batch: [{"text": ..., "seed": ...}]; sample i uses seed + i."""
        GenerateConfig(length=length, num=num)
        cfg = SampleConfig.of(sampling, **settings)
        banned = self.banned(cfg.ban, unknown)
        ids, logits, state = self.read(prompt, unknown)
        base = draw_seed(seed)
        seeds = [base + i for i in range(num)]
        stops = [Stops(cfg.stop) for _ in seeds]
        texts = [""] * num
        pieces = [self.tokenizer.stream() for _ in seeds]
        for nxt in sample(self.decoder, logits, state, ids, cfg, banned, seeds, length):
            for i, t in enumerate(nxt.tolist()):
                if not stops[i].done:
                    texts[i] += stops[i].push(pieces[i](t))
            if all(s.done for s in stops):
                break
        return [{"text": t + s.flush(), "seed": sd} for t, s, sd in zip(texts, stops, seeds)]

    def next_tokens(self, prompt: str, k: int = 5, unknown: str = DataConfig.unknown) -> list[tuple[str, float]]:
        """The k likeliest next tokens (characters, words or subwords) after `prompt`, with their probabilities."""
        return self.top_tokens(self.read(prompt, unknown)[1], k)

    next_chars = next_tokens  # the name of the character-level days, kept for users' code

    def session(self, story: str = "", unknown: str = DataConfig.unknown) -> "Session":
        """A co-writing session over a growing story, its state cached."""
        return Session(self, story, unknown)

    def top_tokens(self, logits: torch.Tensor, k: int) -> list[tuple[str, float]]:
        """The k likeliest tokens under logits (1, V), with their probabilities; never <unk>."""
        p = torch.softmax(logits[0], -1)
        p[list(self.tokenizer.never())] = 0
        top = p.topk(min(k, logits.shape[-1]))
        return [(self.tokenizer.decode([i]), v) for v, i in zip(top.values.tolist(), top.indices.tolist())]

    def _write(self, logits, state, recent, cfg: SampleConfig, banned, seed: int | None, length: int,
               decoder: Decoder | None = None) -> Iterator[str]:
        """Sampled text for one stream, piece by piece, cut before any stop string."""
        piece, stops = self.tokenizer.stream(), Stops(cfg.stop)
        for nxt in sample(decoder or self.decoder, logits, state, recent, cfg, banned, [draw_seed(seed)], length):
            out = stops.push(piece(int(nxt[0])))
            if out:
                yield out
            if stops.done:
                return
        rest = stops.flush()
        if rest:
            yield rest

    def _beam(self, logits, state, width: int, length: int, banned, stops: tuple[str, ...], decoder: Decoder | None = None) -> str:
        decode = self.tokenizer.decode
        found = beam_search(decoder or self.decoder, logits, state, width, length, banned, lambda seq: any(s in decode(seq) for s in stops))
        text = decode(found)
        hits = [text.find(s) for s in stops if s in text]
        return text[: min(hits)] if hits else text


class Session:
    """A story written together: the model's state after the story is kept,
    so a proposal starts at once however long the story is."""

    def __init__(self, writer: Writer, story: str = "", unknown: str = DataConfig.unknown):
        self.writer, self.unknown = writer, unknown
        self.story = ""
        self.ids, self.logits, self.state = writer.read("", unknown)  # the new-line primer
        self.add(story)

    def add(self, text: str) -> None:
        """Append text to the story, reading only the new characters."""
        w = self.writer
        ids = w.encode(text, self.unknown, "your text")
        if len(ids):
            self.logits, self.state = w.decoder.read(ids, self.state)
            self.ids = ids[-64:]
            self.story += w.tokenizer.decode(ids)

    def propose(self, length: int = GenerateConfig.length, seed: int | None = None, *, sampling: SampleConfig | None = None,
                **settings) -> str:
        """A continuation of the story; the story itself is unchanged until `add`."""
        GenerateConfig(length=length)
        w = self.writer
        cfg = SampleConfig.of(sampling, **settings)
        banned = w.banned(cfg.ban, self.unknown)
        return "".join(w._write(self.logits, self.state, self.ids, cfg, banned, seed, length))

    def next_tokens(self, k: int = 5) -> list[tuple[str, float]]:
        return self.writer.top_tokens(self.logits, k)

    next_chars = next_tokens

    def next_words(self, k: int = 5) -> list[tuple[str, float]]:
        """The k likeliest next words: whole tokens where tokens are words or subwords, else spelled out."""
        tok = self.writer.tokenizer
        if tok.words_are_tokens:
            return self.next_tokens(k)
        boundary = set(tok.boundaries())
        if not boundary:
            return []
        words = next_words(self.writer.decoder, self.logits, self.state, boundary, k)
        return [(tok.decode(ids), math.exp(lp)) for ids, lp in words]


def save_samples(path: str | Path, run: str | Path, prompt: str, samples: list[dict], settings: dict) -> None:
    """Append samples, with the seed and settings that reproduce each, to a JSON-lines file."""
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    with open(path, "a") as f:
        for s in samples:
            f.write(json.dumps({"run": str(run), "prompt": prompt, **s, "settings": settings, "time": stamp}) + "\n")
