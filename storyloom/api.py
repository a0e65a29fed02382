"""The Python API: what people, the CLI and the server call.

    import storyloom
    path = storyloom.train(["mybook.txt"], minutes=5)
    m = storyloom.load(path)
    print(m.generate("Once upon a time", length=200, seed=1))
    m.score(open("other.txt").read())   # {'bpc': ..., 'nats_per_char': ..., ...}

This module orchestrates: it turns settings into configs, sources into a
corpus, and a corpus into a trained run. Writing with a run lives in
writer.py (`Writer`, `Session`) and preparing a corpus in prepared.py
(`prepare`), both re-exported here.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
from pathlib import Path

import torch

from . import presets
from .batches import Batches
from .clean import normalize
from .config import DEFAULT_MINUTES, RESUMABLE, LoadConfig, RunConfig, flag, override
from .corpus import benchmark_split, build, clean_sources, note_val_only
from .cpu import physical_cores
from .files import read_bytes, sha256
from .kernels import resolve_lstm_kernel
from .prepared import load_prepared, prepare, prepared_dir, texts
from .errors import UserError
from .model import LanguageModel, n_params
from .novelty import Index, codepoints, report
from .runs import Run, base_path
from .runtime import device, keep_freed_memory, resolve_precision, seed_everything, set_deterministic, set_threads
from .sources import read
from .train import Trainer, step_timer
from .world import World
from .writer import Session, Writer, draw_seed, save_samples

__all__ = ["train", "prepare", "load", "status", "metrics", "validation_text", "novelty", "clean_sources", "Writer",
           "Session", "save_samples", "draw_seed"]

LIMITS = ("steps", "epochs", "minutes")  # a new limit given to --resume replaces all three


def _configure(sources, preset: str, flags: dict) -> RunConfig:
    cfg = presets.build(preset, flags)
    cfg.data = benchmark_split(sources, cfg.data, flags)
    if not cfg.train.limited:
        cfg.train.minutes = DEFAULT_MINUTES
    # Paths are stored absolute so --resume finds them from any directory.
    cfg.sources = tuple(s if s == "-" or not Path(s).exists() else str(Path(s).resolve()) for s in sources)
    return cfg


def train(sources=(), *, out: str | Path | None = None, preset: str = "default", resume: str | Path | None = None,
          init: str | Path | None = None, overwrite: bool = False, progress: bool = True, on_step=None, **flags) -> Path:
    """Train a run (or continue one with `resume`) and return its directory.

    `flags` are the `storyloom train` flags with underscores (the fields of
    ModelConfig, DataConfig and TrainConfig): hidden=256, seq_len=100,
    minutes=5, val_files=("a.txt",), precision="bf16", ... `overwrite`
    replaces a run already in `out`; `on_step(trainer)` is called before
    every optimizer step. `init` starts from another run's weights and
    architecture (fine-tuning; see `_based`).

    Launched by torchrun, each process calls this with the same arguments:
    they train one run data-parallel, and rank 0 writes it (world.py).
    """
    flags = {k: v for k, v in flags.items() if v is not None}
    if resume is not None and overwrite:
        raise UserError("--overwrite starts a new run and --resume continues one; give only one of them")
    if resume is not None and init is not None:
        raise UserError("--init starts a new run from a base run and --resume continues one; give only one of them")
    run = Run.open(resume) if resume is not None else None
    cfg, sources = _resumed(run, sources, flags) if run else (_configure(sources, preset, flags), sources)
    base = _based(cfg, Run.open(base_path(init)), flags) if init is not None else None
    tc = cfg.train
    world = World.join(device(tc.device), tc.dist_timeout)
    try:
        path = _train(world, run, cfg, sources, flags, preset, out, overwrite, progress, on_step, base)
    except BaseException:
        world.abandon()
        raise
    world.leave()
    return path


def _train(world: World, run: Run | None, cfg: RunConfig, sources, flags: dict, preset: str, out, overwrite: bool,
           progress: bool, on_step, base: Run | None = None) -> Path:
    tc, resume = cfg.train, run is not None

    def read():
        corpus = (_based_corpus(sources, cfg, base) if base
                  else _corpus(sources, cfg, run.tokenizer() if run else None, flags, preset))
        Batches.check(len(corpus.train), tc.batch_size, tc.seq_len)
        world.shard(tc.batch_size)
        return corpus

    corpus = world.together(read, "reading the text")
    if world.main:
        note_val_only(corpus.val_only)
    cfg.model.vocab_size = len(corpus.tokenizer)
    if not resume:
        note = presets.small_text(cfg, corpus.train_chars, set(flags), fine_tune=base is not None)
        tc = cfg.train  # small_text may have replaced it
        if note and world.main:
            print(f"storyloom: note: {note}", file=sys.stderr)
    set_threads(tc.threads or world.threads(physical_cores()))
    keep_freed_memory()
    set_deterministic(tc.deterministic)
    dev = world.device(device(tc.device))
    precision = resolve_precision(tc.precision, dev)
    seed_everything(tc.seed)
    model = LanguageModel(cfg.model)
    if base is not None:
        model.load_state_dict(_grown(base, corpus.tokenizer))
    model = model.to(dev)
    B = len(range(tc.batch_size)[world.shard(tc.batch_size)])  # this rank's streams
    trial = step_timer(model, precision, B, tc.seq_len)
    started = run.info().get("lstm_kernel") if resume else None  # a resumed run goes on through it
    # auto may time both kernels: rank 0 does, and every rank trains through its answer (loaded there by name)
    kernel = world.broadcast(world.together(
        lambda: resolve_lstm_kernel(tc.lstm_kernel, precision, dev, model, B, tc.seq_len, trial, started=started)
        if world.main else None, "choosing the LSTM kernel"), "sharing the LSTM kernel")
    kernel = world.together(lambda: kernel if world.main else
                            resolve_lstm_kernel(kernel, precision, dev, model, B, tc.seq_len, trial), "loading the LSTM kernel")
    if world.rank:  # the same initial weights on every rank, but each rank its own dropout masks
        torch.manual_seed(tc.seed + 7919 * world.rank)
    if not resume:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        info = {"params": n_params(model), "level": corpus.tokenizer.kind, "vocab": len(corpus.tokenizer),
                "train_chars": corpus.train_chars, "train_tokens": int(len(corpus.train)), "val_chars": corpus.val_chars,
                "val_tokens": int(len(corpus.val)), "train_works": corpus.train_names, "val_works": corpus.val_names,
                "precision": precision, "lstm_kernel": kernel, "device": str(dev), "torch": torch.__version__, "ranks": world.size}
        target = out or Path("runs") / f"{preset}-{stamp}"
        run = world.together(lambda: Run.create(target, cfg, corpus.tokenizer, info, overwrite) if world.main else None,
                             "creating the run")
        path = world.broadcast(str(run.path) if world.main else None)
        run = world.together(lambda: run if world.main else Run.open(path), "opening the run")
    trainer = Trainer(model, corpus, tc, run, precision, on_step, world, kernel)
    if resume:
        world.together(trainer.restore, "reading the checkpoint")
        if trainer.resumed_from != world.size and world.main:
            print(f"storyloom: note: {run.path} was checkpointed by {trainer.resumed_from} rank(s) and resumes on "
                  f"{world.size}: the {tc.batch_size} streams are re-sharded exactly (same batches, same carried state); "
                  "dropout's random draws go on from new seeds", file=sys.stderr)
        if tc != run.config().train and world.main:  # new limits are part of the run from now on
            run.set_train_config(dataclasses.asdict(tc))
    trainer.fit(show_progress=progress)
    if not resume and base is None and world.size == 1:
        note = presets.narrower(cfg, set(flags), trainer.chars_per_s())
        if note:
            print(f"storyloom: note: {note}", file=sys.stderr)
    return run.path


def _based(cfg: RunConfig, base: Run, flags: dict) -> Run:
    """Fine-tuning from `base`: its architecture and text settings hold (a flag that contradicts them is refused);
    training settings, dropout included, are this run's. The config records the base (path, manifest hash)."""
    b = base.config()
    model_flags = {k for k in flags if k in {f.name for f in dataclasses.fields(b.model)}} - {"dropout", "vocab_size"}
    clash = sorted(k for k in model_flags if flags[k] != getattr(b.model, k))
    if clash:
        raise UserError(f"--init {base.path}: {', '.join(f'{flag(k)} {flags[k]}' for k in clash)} contradicts the base "
                        f"({', '.join(f'{k} {getattr(b.model, k)}' for k in clash)}); a fine-tuned run keeps its base's "
                        "architecture: drop those flags")
    for k in ("level", "lowercase"):
        if k in flags and flags[k] != getattr(b.data, k):
            raise UserError(f"--init {base.path}: {flag(k)} {flags[k]} contradicts the base ({k} {getattr(b.data, k)}); drop it")
    cfg.model = override(b.model, **({"dropout": flags["dropout"]} if "dropout" in flags else {}))
    cfg.data = override(cfg.data, level=b.data.level, lowercase=b.data.lowercase, vocab_size=b.data.vocab_size,
                        max_vocab=b.data.max_vocab, min_count=b.data.min_count)
    if "lr" not in flags:
        cfg.train = override(cfg.train, lr=b.train.lr * FINE_TUNE_LR)
    cfg.base = {"path": str(base.path.resolve()), "manifest_sha256": sha256(read_bytes(base.path / "manifest.json"))}
    return base


FINE_TUNE_LR = 0.25  # --init's default learning rate, as a share of the base's (benchmarks/README.md, "Fine-tuning", "Your one book")


def _based_corpus(sources, cfg: RunConfig, base: Run):
    """The corpus for a fine-tuned run: the base's tokenizer; at character level grown by the new text's characters."""
    if prepared_dir(sources) is not None:
        raise UserError("--init reads text sources (a prepared corpus has its own vocabulary); give the text files")
    docs = read(sources, cfg.data.encoding)
    tok = base.tokenizer()
    if tok.kind != "char":
        return build(docs, cfg.data, tok)  # words and subwords the base lacks follow --unknown
    corpus = build(docs, cfg.data, grow=tok)  # this text's characters (validation-only ones too) join the base's
    new = len(corpus.tokenizer) - len(tok)
    if new and base.config().model.input != "embedding":
        raise UserError(f"--init {base.path}: this text has {new} character(s) the base never saw, "
                        f"and its {base.config().model.input} input cannot grow; pass --unknown replace or clean them out")
    return corpus


def _grown(base: Run, tok) -> dict:
    """The base's best weights for the vocabulary `tok`: a token the base knew keeps its rows; a new character's
    input row is the mean of the base's input rows and its output row the mean of its output rows, with the
    smallest output bias the base has, so it starts as rare as the base's rarest character."""
    _, w = base.weights("best")
    old = base.tokenizer()
    if tok.kind != "char" or list(old.chars) == list(tok.chars):
        return w
    index = {c: i for i, c in enumerate(old.chars)}
    rows = [index.get(c, -1) for c in tok.chars]
    out = dict(w)
    for name in ("inp.weight", "head.weight", "head.bias"):
        if name in w:
            t = w[name]
            fill = t.min() if name == "head.bias" else t.mean(0)
            out[name] = torch.stack([t[i] if i >= 0 else fill for i in rows])
    return out


def _resumed(run: Run, sources, flags: dict) -> tuple[RunConfig, list]:
    """The run's config with what --resume may change changed, and the sources to read again."""
    cfg = run.config()
    fixed = sorted(set(flags) - set(RESUMABLE))
    if fixed:
        raise UserError(f"--resume continues a run as configured; drop {', '.join(flag(f) for f in fixed)} "
                        f"(only {', '.join(flag(f) for f in RESUMABLE)} may change)")
    if set(flags) & set(LIMITS):  # new limits replace the old ones
        cfg.train = override(cfg.train, **{k: flags.get(k, 0) for k in LIMITS})
    cfg.train = override(cfg.train, **{k: v for k, v in flags.items() if k not in LIMITS})
    if "-" in cfg.sources and not sources:
        raise UserError(f"{run.path}: this run was trained from stdin; give the text again: "
                        f"storyloom train - --resume {run.path}")
    return cfg, list(sources) or list(cfg.sources)


def _corpus(sources, cfg: RunConfig, tokenizer, flags: dict, preset: str):
    """The training and validation ids: read from a prepared corpus (whose text settings then hold), or built."""
    prep = prepared_dir(sources)
    if prep is None:
        return build(read(sources, cfg.data.encoding), cfg.data, tokenizer)
    corpus, data = load_prepared(prep)
    if tokenizer is not None:  # resuming
        if corpus.tokenizer.to_dict() != tokenizer.to_dict():
            raise UserError(f"{prep}: its vocabulary differs from the run's; resume with the corpus the run was trained on")
        return corpus
    fixed = sorted(k for k in set(flags) & set(presets.DATA_FLAGS) if k != "unknown")
    if fixed:
        raise UserError(f"{prep}: a prepared corpus fixes its text settings; drop "
                        f"{', '.join(flag(f) for f in fixed)} or prepare it again with them")
    if cfg.data.level != data.level:
        raise UserError(f"--preset {preset} works at {cfg.data.level} level but {prep} was prepared at {data.level} "
                        f"level; run storyloom prepare --level {cfg.data.level}, or choose another preset")
    cfg.data = data
    return corpus


def status(path: str | Path) -> dict:
    """Where a run's training stands: step, epoch, elapsed, best bpc, and why it stopped."""
    return dataclasses.asdict(Run.open(path).latest().position())


def validation_text(path: str | Path) -> str:
    """The cleaned validation text of a run, split exactly as it was trained."""
    run = Run.open(path)
    cfg = run.config()
    try:
        return "".join(t for _, t in texts(cfg.sources, cfg.data, run.tokenizer(), "val"))
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def metrics(path: str | Path) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    return Run.open(path).metrics()


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


def load(path: str | Path, which: str = LoadConfig.which, device: str = LoadConfig.device,
         precision: str = LoadConfig.precision, threads: int = LoadConfig.threads,
         decode_precision: str = LoadConfig.decode_precision) -> Writer:
    """Open a run directory for writing and scoring; `which` is "best" or "last", `device` auto (a CUDA GPU
    when one is visible), cpu or cuda; `threads` 0 fits the CPU threads to the free cores; `decode_precision`
    how the step that writes holds the weights (LoadConfig). A run trained on either device loads on both."""
    return Writer(path, which, device, precision, threads, decode_precision)
