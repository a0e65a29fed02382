"""The command line: argparse subcommands over the Python API.

main(argv) returns the exit code. A UserError becomes one line on stderr
and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys

from . import api, plots, presets
from .config import CELLS, DEVICES, INPUTS, LEVELS, PRECISIONS, UNKNOWN
from .compare import compare
from .cowrite import run_session
from .experiments import EXPERIMENTS
from .inspection import inspect
from .errors import UserError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise UserError(f"{self.prog}: {message} (see --help)")


def _csv(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoding", default=None, help="text encoding of the sources (default utf-8)")
    p.add_argument("--lowercase", action="store_true", default=None, help="fold case (seed 003)")


def _add_split_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--val-files", type=_csv, help="validation works by file name, comma-separated")
    p.add_argument("--val-fraction", type=float, help="else hold out this share at the end of each work (default 0.05)")


def _add_level_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--level", choices=LEVELS, help="tokens: char (default), word, or bpe (byte-level BPE)")
    p.add_argument("--vocab-size", type=int, help="bpe: vocabulary to learn (default 2000)")
    p.add_argument("--max-vocab", type=int, help="word: keep the most frequent words, <unk> included (default 20000; 0: all)")
    p.add_argument("--min-count", type=int, help="word: rarer words become <unk> (default 2)")


def _add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto (a CUDA GPU when one is visible), cpu or cuda")


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy; higher is wilder (default 0.8)")
    p.add_argument("--top-k", type=int, help="sample only from the k likeliest characters")
    p.add_argument("--top-p", type=float, default=1.0, help="sample only from the smallest set with this much probability")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages characters used in the last --penalty-window")
    p.add_argument("--penalty-window", type=int, default=32)
    p.add_argument("--ban", default="", metavar="CHARS", help="characters never to write")
    p.add_argument("--stop", action="append", default=[], metavar="STRING", help="end before this string (repeatable)")
    p.add_argument("--seed", type=int, help="makes the text reproducible (default: drawn and shown on stderr)")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="storyloom", description="Train a recurrent language model on a book and write in its style.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=Parser)

    t = sub.add_parser("train", help="train a run on text (default: the bundled Shakespeare corpus)")
    t.add_argument("sources", nargs="*", metavar="SOURCE", help="files, directories, globs, - for stdin, .gz, or a bundled corpus name")
    t.add_argument("--out", help="run directory (default runs/<preset>-<date>-<time>)")
    t.add_argument("--preset", default="default", help="a named configuration (see `storyloom presets`)")
    t.add_argument("--resume", metavar="RUN", help="continue this run from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    g = t.add_argument_group("stopping (default: --minutes 10)")
    g.add_argument("--steps", type=int, help="stop after this many optimizer steps")
    g.add_argument("--epochs", type=float, help="stop after this many passes over the training text")
    g.add_argument("--minutes", type=float, help="stop after this much wall-clock time")
    g.add_argument("--patience", type=int, help="stop after this many evaluations without improvement (0: never; default 3)")
    m = t.add_argument_group("model (override the preset)")
    m.add_argument("--input", choices=INPUTS, help="how characters enter the LSTM")
    m.add_argument("--embed", type=int, help="embedding width")
    m.add_argument("--hidden", type=int, help="LSTM units per layer")
    m.add_argument("--layers", type=int, help="stacked LSTM layers")
    m.add_argument("--dropout", type=float, help="dropout on inputs, between layers and before the head")
    m.add_argument("--cell", choices=CELLS, help="lstm (default), lstm-reference (the seed equations, slow), gru, rnn, transformer")
    m.add_argument("--forget-bias", type=float, help="lstm: the forget gate's starting bias (default 1; 3 remembers longer)")
    m.add_argument("--heads", type=int, help="transformer: attention heads (default 4)")
    m.add_argument("--context", type=int, help="transformer: tokens each token attends to before itself (default 128)")
    m.add_argument("--tie", action="store_true", default=None, help="the head reuses the embedding (a projection bridges embed != hidden)")
    o = t.add_argument_group("optimisation (override the preset)")
    o.add_argument("--seq-len", type=int, help="T: steps of backpropagation per batch")
    o.add_argument("--batch-size", type=int, help="B: parallel contiguous streams")
    o.add_argument("--lr", type=float, help="peak learning rate")
    o.add_argument("--warmup", type=int, help="linear warmup steps")
    o.add_argument("--min-lr-ratio", type=float, help="the cosine ends at lr times this (default 0.05)")
    o.add_argument("--weight-decay", type=float, help="AdamW weight decay on matrices")
    o.add_argument("--clip", type=float, help="gradient-norm clipping (0 disables)")
    o.add_argument("--reset-prob", type=float, help="chance per stream and batch that its carried state is zeroed (default 0.01)")
    o.add_argument("--evals", type=int, help="validation evaluations over the run (default 10)")
    o.add_argument("--eval-tokens", type=int, help="evaluations during training read at most this many validation tokens, "
                   "a fixed sample spread over the text (default 500,000; `storyloom eval` reads all)")
    o.add_argument("--log-every", type=int, help="steps between rows of metrics.jsonl (default 20)")
    o.add_argument("--seed", type=int, help="random seed (default 1234)")
    o.add_argument("--precision", choices=PRECISIONS, help="auto: bf16 where the hardware has it natively")
    o.add_argument("--device", choices=DEVICES, help="auto (default: a CUDA GPU when one is visible), cpu or cuda")
    o.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    k = t.add_argument_group("checkpoints and faults")
    k.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps (default 0: at evaluations and the end)")
    k.add_argument("--checkpoint-minutes", type=float, help="also checkpoint after M minutes since the last (default 5; 0: never)")
    k.add_argument("--keep", type=int, help="how many of the newest checkpoints to keep (default 2)")
    k.add_argument("--bad-steps", type=int, help="non-finite steps in a row before restoring the last checkpoint at half the rate (default 5)")
    k.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic kernels: a resumed run repeats an uninterrupted one bit for bit (needs --steps or --epochs)")
    d = t.add_argument_group("data")
    _add_data_flags(d)
    _add_split_flags(d)
    d.add_argument("--unknown", choices=UNKNOWN, help="unseen characters in validation text: error or replace")
    _add_level_flags(d)
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="bits per character of a run on texts, read as one stream")
    e.add_argument("run", metavar="RUN")
    e.add_argument("texts", nargs="+", metavar="TEXT", help="files, directories, globs, - or a bundled corpus name")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--which", choices=("best", "last"), default="best")
    e.add_argument("--unknown", choices=UNKNOWN, default="error")
    e.add_argument("--encoding", default="utf-8")
    e.add_argument("--precision", choices=PRECISIONS, default="fp32")
    _add_device_flag(e)

    w = sub.add_parser("generate", help="write text from a run")
    w.add_argument("run", metavar="RUN")
    w.add_argument("--prompt", default="", help="text to start from (printed first)")
    w.add_argument("--length", type=int, default=500, help="new characters to write (0: until a stop string or Ctrl-C)")
    _add_sampling_flags(w)
    w.add_argument("--beam", type=int, default=0, help="beam search of this width instead of sampling (deterministic; 1 is greedy)")
    w.add_argument("--num", type=int, default=1, help="write this many samples as one batch")
    w.add_argument("--json", action="store_true", help="one JSON object per sample: {\"text\": ..., \"seed\": ...}")
    w.add_argument("--check-novelty", action="store_true", help="report how much of the text is copied from the training text")
    w.add_argument("--save", metavar="FILE", help="append the samples, with their seeds and settings, to this JSON-lines file")
    w.add_argument("--which", choices=("best", "last"), default="best")
    w.add_argument("--unknown", choices=UNKNOWN, default="error")
    _add_device_flag(w)

    cw = sub.add_parser("write", help="co-write a story with a run, in the terminal")
    cw.add_argument("run", metavar="RUN")
    cw.add_argument("--length", type=int, default=200, help="characters per proposal")
    _add_sampling_flags(cw)
    cw.add_argument("--story", metavar="FILE", help="start from the text in this file")
    cw.add_argument("--which", choices=("best", "last"), default="best")
    cw.add_argument("--unknown", choices=UNKNOWN, default="replace")
    _add_device_flag(cw)

    cp = sub.add_parser("compare", help="train several configurations for the same time and report bpc side by side")
    cp.add_argument("specs", nargs="+", metavar="SPEC", help="a preset, optionally with overrides: default:level=bpe,vocab_size=2000")
    cp.add_argument("--out", required=True, help="directory for report.md, curves.png, results.jsonl and the runs")
    cp.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of each run (default 10)")
    cp.add_argument("--source", action="append", default=[], metavar="SOURCE",
                    help="training text, as for train (repeatable; default: the bundled corpus and its benchmark split)")
    _add_data_flags(cp)
    _add_split_flags(cp)
    cp.add_argument("--unknown", choices=UNKNOWN, help="unseen characters in validation text: error or replace")
    cp.add_argument("--seed", type=int)
    cp.add_argument("--precision", choices=PRECISIONS)
    cp.add_argument("--device", choices=DEVICES)
    cp.add_argument("--threads", type=int)
    cp.add_argument("--overwrite", action="store_true", help="replace runs left in --out by an earlier compare")
    cp.add_argument("--no-progress", action="store_true")

    x = sub.add_parser("experiment", help="measure the seeds' claims: long-range (memory across K steps) or gradients")
    x.add_argument("name", choices=tuple(EXPERIMENTS), metavar="NAME", help="long-range or gradients")
    x.add_argument("--out", required=True, help="directory for the plots, results.json and report.md")
    x.add_argument("--steps", type=int, help="training steps per model (long-range default 1000, gradients default 300)")
    x.add_argument("--threads", type=int, default=0)

    i = sub.add_parser("inspect", help="a self-contained HTML page of what each unit of a run responds to")
    i.add_argument("run", metavar="RUN")
    i.add_argument("texts", nargs="+", metavar="TEXT", help="files, globs, - or a bundled corpus name")
    i.add_argument("--out", required=True, help="the HTML file to write")
    i.add_argument("--chars", type=int, default=3000, help="read this many characters of the text (default 3000)")
    i.add_argument("--offset", type=int, default=0, help="start this many characters into the text")
    i.add_argument("--unit", type=int, help="the unit to colour by first (default: the best-correlated)")
    i.add_argument("--which", choices=("best", "last"), default="best")
    i.add_argument("--encoding", default="utf-8")

    pl = sub.add_parser("plot", help="train and validation bpc of runs against steps and wall time, as a PNG")
    pl.add_argument("runs", nargs="+", metavar="RUN")
    pl.add_argument("--out", required=True, help="the PNG file to write")

    pr = sub.add_parser("prepare", help="clean and encode sources once, for training on any size of text in constant memory")
    pr.add_argument("sources", nargs="*", metavar="SOURCE", help="as for train (default: the bundled corpus)")
    pr.add_argument("--out", required=True, help="directory for train.bin, val.bin, vocab.json and prepared.json")
    pr.add_argument("--workers", type=int, default=0, help="processes for character level (default 0: one per core)")
    _add_data_flags(pr)
    _add_split_flags(pr)
    _add_level_flags(pr)

    c = sub.add_parser("clean", help="print what the model sees of the sources")
    c.add_argument("sources", nargs="+", metavar="SOURCE")
    _add_data_flags(c)

    sub.add_parser("presets", help="list the named configurations")
    return ap


TRAIN_FLAGS = ("steps", "epochs", "minutes", "patience", "input", "embed", "hidden", "layers", "dropout", "seq_len",
               "batch_size", "lr", "warmup", "min_lr_ratio", "weight_decay", "clip", "reset_prob", "evals", "eval_tokens", "log_every", "seed", "precision", "device", "threads",
               "encoding", "lowercase", "val_files", "val_fraction", "unknown", "checkpoint_every", "checkpoint_minutes", "keep",
               "bad_steps", "deterministic", "tie", "cell", "forget_bias", "heads", "context", "level", "vocab_size", "max_vocab", "min_count")


def cmd_train(a) -> int:
    flags = {k: getattr(a, k) for k in TRAIN_FLAGS}
    path = api.train(a.sources, out=a.out, preset=a.preset, resume=a.resume, overwrite=a.overwrite,
                     progress=not a.no_progress, **flags)
    st = api.status(path)
    if st["stopped"] == "interrupted":
        print(f"stopped at step {st['step']} and saved; continue with: storyloom train --resume {path}")
        return 0
    if st["stopped"] == "patience":
        print(f"early stopping: no improvement in the last {st['bad_evals']} evaluations")
    rows = [r for r in api.metrics(path) if "val_bpc" in r]
    best = min(r["val_bpc"] for r in rows) if rows else float("nan")
    last = rows[-1] if rows else {}
    print(f"val bpc {last.get('val_bpc', float('nan')):.4f} (best {best:.4f}) after {last.get('step', 0)} steps "
          f"in {last.get('elapsed_s', 0) / 60:.1f} min; run saved in {path}")
    print(f"write with: storyloom generate {path} --prompt 'Once upon a time'")
    return 0


def cmd_eval(a) -> int:
    m = api.load(a.run, which=a.which, device=a.device, precision=a.precision)
    text = api.clean_sources(a.texts, encoding=a.encoding)
    r = m.score(text, unknown=a.unknown)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"bpc {r['bpc']:.4f}  nats/char {r['nats_per_char']:.4f}  perplexity {r['perplexity']:.4f}  chars {r['chars']}  "
              f"token perplexity {r['token_perplexity']:.4f}  tokens {r['tokens']}")
    return 0


SAMPLING = ("temperature", "top_k", "top_p", "repetition_penalty", "penalty_window", "ban", "stop")


def _drawn_seed(seed: int | None) -> tuple[int, bool]:
    """The seed to use, and whether it was drawn (and so must be shown once the flags prove valid)."""
    return (random.randrange(2**31), True) if seed is None else (seed, False)


def _show_seed(seed: int, drawn: bool) -> None:
    if drawn:
        print(f"seed: {seed}", file=sys.stderr)


def cmd_generate(a) -> int:
    m = api.load(a.run, which=a.which, device=a.device)
    kw = {k: getattr(a, k) for k in SAMPLING}
    api.check_sampling(m, a.length, a.beam, a.num, a.unknown, **kw)
    seed, drawn = _drawn_seed(a.seed)
    if a.num > 1 or a.json or a.save:
        if a.beam:
            outs = [{"text": m.generate(a.prompt, a.length, seed=seed, beam=a.beam, unknown=a.unknown, **kw), "seed": seed}]
        else:
            outs = m.samples(a.prompt, a.num, a.length, seed=seed, unknown=a.unknown, **kw)
        _show_seed(seed, drawn)
        if a.check_novelty:
            for o in outs:
                o["novelty"] = api.novelty(m, o["text"])
        for i, o in enumerate(outs):
            if a.json:
                print(json.dumps(o))
            else:
                print(("---\n" if i else "") + a.prompt + o["text"])
                if a.check_novelty:
                    _show_novelty(o["novelty"])
        if a.save:
            api.save_samples(a.save, a.run, a.prompt, outs, {"length": a.length, "beam": a.beam, **kw})
        return 0
    pieces = m.stream(a.prompt, a.length, seed=seed, beam=a.beam, unknown=a.unknown, **kw)
    first = next(pieces, "")  # surface prompt and flag errors before printing anything
    _show_seed(seed, drawn)
    sys.stdout.write(a.prompt + first)
    sys.stdout.flush()
    text = [first]
    try:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
            if a.check_novelty:
                text.append(piece)
    except KeyboardInterrupt:
        pass
    sys.stdout.write("\n")
    if a.check_novelty:
        _show_novelty(api.novelty(m, "".join(text)))
    return 0


def _show_novelty(r: dict) -> None:
    at = r.get("copied_at", {})
    shares = "/".join("-" if r[f"novel_{n}grams"] is None else f"{100 * r[f'novel_{n}grams']:.1f}%" for n in (10, 20, 50))
    print(f"novelty: longest copied span {r['longest_copied']} chars"
          + (f" ({at['work']} at {at['work_offset']})" if at else "")
          + f"; novel 10/20/50-grams: {shares}", file=sys.stderr)


def cmd_write(a) -> int:
    m = api.load(a.run, which=a.which, device=a.device)
    story = api.clean_sources([a.story]) if a.story else ""
    kw = {k: getattr(a, k) for k in SAMPLING}
    api.check_sampling(m, a.length, **kw)
    seed, drawn = _drawn_seed(a.seed)
    _show_seed(seed, drawn)
    return run_session(m, story, a.length, seed, kw, a.unknown, sys.stdin, sys.stdout)


COMPARE_FLAGS = ("encoding", "lowercase", "val_files", "val_fraction", "unknown", "seed", "precision", "device", "threads")


def cmd_compare(a) -> int:
    flags = {k: getattr(a, k) for k in COMPARE_FLAGS if getattr(a, k) is not None}
    out = compare(a.specs, a.source, minutes=a.minutes, out=a.out, overwrite=a.overwrite, progress=not a.no_progress,
                  command="storyloom " + shlex.join(a.argv), **flags)
    print(f"report: {out / 'report.md'}  curves: {out / 'curves.png'}")
    return 0


def cmd_experiment(a) -> int:
    kw = {"steps": a.steps} if a.steps is not None else {}
    if a.steps is not None and a.steps < 1:
        raise UserError(f"--steps must be a positive integer, got {a.steps}")
    EXPERIMENTS[a.name](a.out, threads=a.threads, **kw)
    print(f"report: {a.out}/report.md")
    return 0


def cmd_inspect(a) -> int:
    if a.chars < 3 or a.offset < 0:
        raise UserError("--chars must be at least 3 and --offset at least 0")
    text = api.clean_sources(a.texts, encoding=a.encoding)[a.offset : a.offset + a.chars]
    r = inspect(a.run, text, a.out, unit=a.unit, which=a.which)
    top = r["ranked"][0] if r["ranked"] else None
    print(f"wrote {a.out}" + (f"; best-correlated: unit {top['unit']} with {top['feature']} (r = {top['r']:+.2f})" if top else ""))
    return 0


def cmd_plot(a) -> int:
    runs = [(str(r), api.metrics(r)) for r in a.runs]
    plots.run_curves(runs, a.out)
    print(f"wrote {a.out}")
    return 0


def cmd_prepare(a) -> int:
    flags = {k: getattr(a, k) for k in ("encoding", "lowercase", "val_files", "val_fraction", "level", "vocab_size", "max_vocab",
                                        "min_count")}
    if a.workers < 0:
        raise UserError(f"--workers must be >= 0 (0: one per core), got {a.workers}")
    meta = api.prepare(a.sources, a.out, workers=a.workers, **flags)
    print(f"{meta['train_tokens']:,} training and {meta['val_tokens']:,} validation tokens ({meta['dtype']}) in {a.out}; "
          f"train with: storyloom train {a.out}")
    return 0


def cmd_clean(a) -> int:
    sys.stdout.write(api.clean_sources(a.sources, lowercase=bool(a.lowercase), encoding=a.encoding or "utf-8"))
    return 0


def cmd_presets(a) -> int:
    for name, p in presets.PRESETS.items():
        print(f"{name:20s} {p.description}")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "generate": cmd_generate, "write": cmd_write, "compare": cmd_compare,
            "experiment": cmd_experiment, "inspect": cmd_inspect, "plot": cmd_plot, "prepare": cmd_prepare,
            "clean": cmd_clean,
            "presets": cmd_presets}


def main(argv: list[str] | None = None) -> int:
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        a = build_parser().parse_args(argv)
        a.argv = argv  # for reports that quote their command
        return COMMANDS[a.command](a)
    except UserError as e:
        print(f"storyloom: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
