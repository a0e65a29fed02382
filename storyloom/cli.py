"""The command line: argparse subcommands over the Python API.

Every setting's flag is built from its config field (config.py: its default,
help text, choices and type are declared there once), so a flag cannot be
parsed and then dropped. main(argv) returns the exit code. A UserError
becomes one line on stderr and exit code 2; anything else is a bug and keeps
its traceback.

Torch takes 2-3 s to import. The commands that need it import the API (and
what else they use) when they run, so --help, presets, clean and prepare
start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import sys

from typing import TYPE_CHECKING

from . import presets
from .config import (UNKNOWN, AdaptConfig, DataConfig, GenerateConfig, LoadConfig, ModelConfig, SampleConfig, ServeConfig, TrainConfig, flag,
                     settings)
from .corpus import clean_sources
from .errors import RankLost, UserError
from .prepared import prepare

if TYPE_CHECKING:
    from .writer import Writer

RUN_CONFIGS = (ModelConfig, DataConfig, TrainConfig)
COMPARE_FIXED = ("steps", "epochs", "minutes")  # compare gives every spec the same --minutes, and no other limit


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise UserError(f"{self.prog}: {message} (see --help)")


def invocation() -> str:
    """How to run storyloom again from a new shell, for the commands we suggest: `storyloom` where that is on
    PATH and is this one; else the path this process was started by (a virtual environment's bin/, not
    activated: `make demo` runs .venv/bin/storyloom); else this Python with -m."""
    argv0 = sys.argv[0] if sys.argv else ""
    found = shutil.which("storyloom")
    if found and argv0 and os.path.realpath(found) == os.path.realpath(argv0):
        return "storyloom"
    if os.path.basename(argv0) == "storyloom" and os.path.isfile(argv0):
        return shlex.quote(argv0 if os.path.isabs(argv0) or os.sep in argv0 else os.path.join(".", argv0))
    return f"{shlex.quote(sys.executable)} -m storyloom"


def _csv(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def _shown(v) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, tuple):
        return ",".join(v) or "none"
    return "none" if v is None else f"{v:,}" if isinstance(v, int) and v >= 10_000 else str(v)


def add_settings(p: argparse.ArgumentParser, cls, defaults: bool = False, skip=(), only=None, groups: dict | None = None) -> None:
    """One flag per setting of `cls` (those in `only`, if given; none in `skip`), under its group's heading.

    defaults=False: a flag not given parses as None, so a preset (or the run
    being resumed) decides; the help still shows the field's own default.
    """
    groups = {} if groups is None else groups
    for f in settings(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        m = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        g = groups.get(m["group"]) or groups.setdefault(m["group"], p.add_argument_group(m["group"] or None))
        shown = f"{m['help']} (default {_shown(default)})".replace("%", "%%")  # argparse formats help with %
        kw = {"help": shown, "default": default if defaults else None, "dest": f.name}
        if m["metavar"]:
            kw["metavar"] = m["metavar"]
        if isinstance(default, bool):
            g.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **kw)
        elif f.name == "stop":
            g.add_argument(flag(f.name), action="append", type=str, **{**kw, "default": [] if defaults else None})
        elif isinstance(default, tuple):
            g.add_argument(flag(f.name), type=_csv, **kw)
        else:
            g.add_argument(flag(f.name), type=m["type"] or type(default), choices=m["choices"], **kw)


def given(a: argparse.Namespace, *classes, skip=()) -> dict:
    """The settings of `classes` given on the command line (None: not given)."""
    return {f.name: getattr(a, f.name) for cls in classes for f in settings(cls)
            if f.name not in skip and getattr(a, f.name, None) is not None}


def config(a: argparse.Namespace, cls):
    """`cls` built from the command line's flags (each was added with its default)."""
    values = {f.name: getattr(a, f.name) for f in settings(cls) if hasattr(a, f.name)}  # others: the field's default
    if "stop" in values:
        values["stop"] = tuple(values["stop"] or ())
    return cls(**values)


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="storyloom", description="Train a recurrent language model on a book and write in its style.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (_train_parser, _eval_parser, _generate_parser, _write_parser, _compare_parser, _experiment_parser,
                _inspect_parser, _plot_parser, _prepare_parser, _clean_parser, _presets_parser, _serve_parser, _info_parser):
        add(sub)  # one function per command, below
    return ap


def _train_parser(sub) -> None:
    t = sub.add_parser("train", help="train a run on text (default: the bundled Shakespeare corpus)",
                       description="Settings default to the `default` preset's; `storyloom presets` lists the others.",
                       epilog="Data-parallel over N processes (GPUs, or CPU cores): torchrun --nproc-per-node N -m "
                              "storyloom train ... (--batch-size is the global batch; docs/scaling.md)")
    t.add_argument("sources", nargs="*", metavar="SOURCE", help="files, directories, globs, - for stdin, .gz, or a bundled corpus name")
    t.add_argument("--out", help="run directory (default runs/<preset>-<date>-<time>)")
    t.add_argument("--preset", default="default", help="a named configuration (see `storyloom presets`)")
    t.add_argument("--resume", metavar="RUN", help="continue this run from its last checkpoint")
    t.add_argument("--init", metavar="RUN", help="fine-tune: start from this run's best weights and architecture (its "
                   "vocabulary grown by your text's new characters); the learning rate defaults to a quarter of the base's")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    groups: dict = {}
    for cls in RUN_CONFIGS:
        add_settings(t, cls, groups=groups)


def _eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="bits per character of a run on texts, read as one stream")
    e.add_argument("run", metavar="RUN")
    e.add_argument("texts", nargs="+", metavar="TEXT", help="files, directories, globs, - or a bundled corpus name")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    add_settings(e, DataConfig, defaults=True, only=("unknown", "encoding"))
    add_settings(e, LoadConfig, defaults=True)
    e.add_argument("--dynamic", action="store_true", help="also score with dynamic evaluation: the model learns from the "
                   "text as it reads it (a copy; the run does not change), reported beside the static figures")
    add_settings(e, AdaptConfig, defaults=True)


def _generate_parser(sub) -> None:
    w = sub.add_parser("generate", help="write text from a run")
    w.add_argument("run", metavar="RUN")
    w.add_argument("--prompt", default="", help="text to start from (printed first)")
    w.add_argument("--seed", type=int, help="makes the text reproducible (default: drawn and shown on stderr)")
    w.add_argument("--json", action="store_true", help="one JSON object per sample: {\"text\": ..., \"seed\": ...}")
    w.add_argument("--check-novelty", action="store_true", help="report how much of the text is copied from the training text")
    w.add_argument("--save", metavar="FILE", help="append the samples, with their seeds and settings, to this JSON-lines file")
    w.add_argument("--adapt", action="store_true", help="learn from the prompt as it is read (dynamic evaluation, on a "
                   "copy of the model) before writing: a long prompt in a new style is followed more closely")
    add_settings(w, DataConfig, defaults=True, only=("unknown",))
    for cls in (GenerateConfig, SampleConfig, LoadConfig, AdaptConfig):
        add_settings(w, cls, defaults=True)


def _write_parser(sub) -> None:
    cw = sub.add_parser("write", help="co-write a story with a run, in the terminal")
    cw.add_argument("run", metavar="RUN")
    cw.add_argument("--story", metavar="FILE", help="start from the text in this file")
    cw.add_argument("--seed", type=int, help="makes the proposals reproducible (default: drawn and shown)")
    # Typing freely, an unseen character is replaced rather than refused: the one setting whose default differs here.
    cw.add_argument("--unknown", choices=UNKNOWN, default="replace", help="characters you type that the run never saw "
                    "(default replace)")
    add_settings(cw, GenerateConfig, defaults=True, skip=("beam", "num"))
    for cls in (SampleConfig, LoadConfig):
        add_settings(cw, cls, defaults=True)


def _info_parser(sub) -> None:
    i = sub.add_parser("info", help="what a run is: layers, parameters, vocabulary, settings, training, files")
    i.add_argument("run", metavar="RUN")
    i.add_argument("--json", action="store_true", help="print one JSON object")


def _serve_parser(sub) -> None:
    sv = sub.add_parser("serve", help="serve runs over HTTP: a web page to write with, and an OpenAI-compatible API",
                        description="Loopback only unless --host says otherwise; docs/serving.md has the routes.")
    sv.add_argument("runs", nargs="+", metavar="RUN", help="a run directory, or NAME=RUN (the name defaults to the directory's)")
    sv.add_argument("--unknown", choices=UNKNOWN, default="error",
                    help="prompt characters a run never saw: error (a 400 naming the prompt) or replace (default error)")
    for cls in (ServeConfig, LoadConfig):
        add_settings(sv, cls, defaults=True)


def _compare_parser(sub) -> None:
    cp = sub.add_parser("compare", help="train several configurations for the same time and report bpc side by side",
                        description="Settings given as flags apply to every SPEC; a SPEC's own overrides win.")
    cp.add_argument("specs", nargs="+", metavar="SPEC", help="a preset, optionally with overrides: default:level=bpe,vocab_size=2000")
    cp.add_argument("--out", required=True, help="directory for report.md, curves.png, results.jsonl and the runs")
    cp.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of each run (default 10)")
    cp.add_argument("--source", action="append", default=[], metavar="SOURCE",
                    help="training text, as for train (repeatable; default: the bundled corpus and its benchmark split)")
    cp.add_argument("--overwrite", action="store_true", help="replace runs left in --out by an earlier compare")
    cp.add_argument("--no-progress", action="store_true", help="no progress bar")
    groups = {}
    for cls in RUN_CONFIGS:
        add_settings(cp, cls, skip=COMPARE_FIXED, groups=groups)


def _experiment_parser(sub) -> None:
    x = sub.add_parser("experiment", help="measure the seeds' claims: long-range (memory across K steps) or gradients")
    x.add_argument("name", metavar="NAME", help="long-range or gradients")  # run_experiment refuses any other
    x.add_argument("--out", required=True, help="directory for the plots, results.json and report.md")
    x.add_argument("--steps", type=int, help="training steps per model (long-range default 1000, gradients default 300)")
    x.add_argument("--threads", type=int, default=0)


def _inspect_parser(sub) -> None:
    i = sub.add_parser("inspect", help="a self-contained HTML page of what each unit of a run responds to")
    i.add_argument("run", metavar="RUN")
    i.add_argument("texts", nargs="+", metavar="TEXT", help="files, globs, - or a bundled corpus name")
    i.add_argument("--out", required=True, help="the HTML file to write")
    i.add_argument("--chars", type=int, default=3000, help="read this many characters of the text (default 3000)")
    i.add_argument("--offset", type=int, default=0, help="start this many characters into the text")
    i.add_argument("--unit", type=int, help="the unit to colour by first (default: the best-correlated)")
    add_settings(i, LoadConfig, defaults=True, only=("which",))
    add_settings(i, DataConfig, defaults=True, only=("encoding",))


def _plot_parser(sub) -> None:
    pl = sub.add_parser("plot", help="train and validation bpc of runs against steps and wall time, as a PNG")
    pl.add_argument("runs", nargs="+", metavar="RUN")
    pl.add_argument("--out", required=True, help="the PNG file to write")


def _prepare_parser(sub) -> None:
    pr = sub.add_parser("prepare", help="clean and encode sources once, for training on any size of text in constant memory")
    pr.add_argument("sources", nargs="*", metavar="SOURCE", help="as for train (default: the bundled corpus)")
    pr.add_argument("--out", required=True, help="directory for train.bin, val.bin, vocab.json and prepared.json")
    pr.add_argument("--workers", type=int, default=0,
                    help="processes for character level, and for laying out a large file at every level (0: one per core)")
    pr.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_settings(pr, DataConfig)


def _clean_parser(sub) -> None:
    c = sub.add_parser("clean", help="print what the model sees of the sources")
    c.add_argument("sources", nargs="+", metavar="SOURCE")
    add_settings(c, DataConfig, defaults=True, only=("encoding", "lowercase"))


def _presets_parser(sub) -> None:
    sub.add_parser("presets", help="list the named configurations")


def cmd_train(a) -> int:
    from . import api
    from .world import env_rank

    path = api.train(a.sources, out=a.out, preset=a.preset, resume=a.resume, init=a.init, overwrite=a.overwrite,
                     progress=not a.no_progress, **given(a, *RUN_CONFIGS))
    if env_rank():  # torchrun started this command once per rank: rank 0 reports
        return 0
    st = api.status(path)
    if st["stopped"] == "interrupted":
        print(f"stopped at step {st['step']} and saved; continue with: {invocation()} train --resume {shlex.quote(str(path))}")
        return 0
    if st["stopped"] == "patience":
        print(f"early stopping: no improvement in the last {st['bad_evals']} evaluations")
    rows = [r for r in api.metrics(path) if "val_bpc" in r]
    best = min(r["val_bpc"] for r in rows) if rows else float("nan")
    last = rows[-1] if rows else {}
    print(f"val bpc {last.get('val_bpc', float('nan')):.4f} (best {best:.4f}) after {last.get('step', 0)} steps "
          f"in {last.get('elapsed_s', 0) / 60:.1f} min; run saved in {path}")
    print(f"write with: {invocation()} generate {shlex.quote(str(path))} --prompt 'Once upon a time'")
    return 0


def _load(a) -> Writer:
    from . import api

    opts = config(a, LoadConfig)
    return api.load(a.run, opts.which, opts.device, opts.precision, opts.threads, opts.decode_precision)


def cmd_eval(a) -> int:
    m = _load(a)
    text = clean_sources(a.texts, encoding=a.encoding)
    r = m.score(text, unknown=a.unknown, dynamic=a.dynamic, adapting=config(a, AdaptConfig))
    if a.json:
        print(json.dumps(r))
    else:
        print(f"bpc {r['bpc']:.4f}  nats/char {r['nats_per_char']:.4f}  perplexity {r['perplexity']:.4f}  chars {r['chars']}  "
              f"token perplexity {r['token_perplexity']:.4f}  tokens {r['tokens']}"
              + (f"  (through the {r['decode_precision']} step that writes)" if "decode_precision" in r else ""))
        if a.dynamic:
            d = r["dynamic"]
            print(f"dynamic bpc {d['bpc']:.4f}  nats/char {d['nats_per_char']:.4f}  perplexity {d['perplexity']:.4f}  "
                  f"({d['method']}: segment {d['segment']}, lr {d['adapt_lr']:g}, decay {d['adapt_decay']:g})")
    return 0


def _writing(a, m: Writer) -> tuple[SampleConfig, int]:
    """The sampling settings, checked before anything is written, and the seed (drawn if none was given)."""
    from .writer import draw_seed

    sampling = config(a, SampleConfig)
    m.banned(sampling.ban, a.unknown)  # characters to ban that the run never saw: one clear line now
    return sampling, draw_seed(a.seed)


def _show_seed(a, seed: int) -> None:
    """A drawn seed goes to stderr once the input has proved valid, so the text can be written again."""
    if a.seed is None:
        print(f"seed: {seed}", file=sys.stderr)


def cmd_generate(a) -> int:
    from . import api

    gen = config(a, GenerateConfig)
    m = _load(a)
    sampling, seed = _writing(a, m)
    adapting = config(a, AdaptConfig)
    if a.adapt and gen.num > 1:
        raise UserError("--adapt writes one sample from the adapted model; drop --num (or run it once per seed)")
    if gen.num > 1 or a.json or a.save:
        if gen.beam or a.adapt:
            outs = [{"text": m.generate(a.prompt, gen.length, seed=seed, beam=gen.beam, unknown=a.unknown, sampling=sampling,
                                        adapt=a.adapt, adapting=adapting), "seed": seed}]
        else:
            outs = m.samples(a.prompt, gen.num, gen.length, seed=seed, unknown=a.unknown, sampling=sampling)
        _show_seed(a, seed)
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
            api.save_samples(a.save, a.run, a.prompt, outs, {"length": gen.length, "beam": gen.beam,
                                                             **dataclasses.asdict(sampling)})
        return 0
    pieces = m.stream(a.prompt, gen.length, seed=seed, beam=gen.beam, unknown=a.unknown, sampling=sampling, adapt=a.adapt,
                      adapting=adapting)
    first = next(pieces, "")  # surface prompt errors before printing anything
    _show_seed(a, seed)
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
    from .cowrite import run_session

    length = config(a, GenerateConfig).length
    m = _load(a)
    story = clean_sources([a.story]) if a.story else ""
    sampling, seed = _writing(a, m)
    _show_seed(a, seed)
    return run_session(m, story, length, seed, sampling, a.unknown, sys.stdin, sys.stdout)


def cmd_compare(a) -> int:
    from .compare import compare

    out = compare(a.specs, a.source, minutes=a.minutes, out=a.out, overwrite=a.overwrite, progress=not a.no_progress,
                  command="storyloom " + shlex.join(a.argv), **given(a, *RUN_CONFIGS, skip=COMPARE_FIXED))
    print(f"report: {out / 'report.md'}  curves: {out / 'curves.png'}")
    return 0


def cmd_experiment(a) -> int:
    from .experiments import run_experiment

    out = run_experiment(a.name, a.out, steps=a.steps, threads=a.threads)
    print(f"report: {out}/report.md")
    return 0


def cmd_inspect(a) -> int:
    from .inspection import inspect_text

    r = inspect_text(a.run, a.texts, a.out, chars=a.chars, offset=a.offset, unit=a.unit, which=a.which, encoding=a.encoding)
    top = r["ranked"][0] if r["ranked"] else None
    print(f"wrote {a.out}" + (f"; best-correlated: unit {top['unit']} with {top['feature']} (r = {top['r']:+.2f})" if top else ""))
    return 0


def cmd_plot(a) -> int:
    from . import api, plots

    runs = [(str(r), api.metrics(r)) for r in a.runs]
    plots.run_curves(runs, a.out)
    print(f"wrote {a.out}")
    return 0


def cmd_prepare(a) -> int:
    meta = prepare(a.sources, a.out, workers=a.workers, progress=not a.no_progress, **given(a, DataConfig))
    print(f"{meta['train_tokens']:,} training and {meta['val_tokens']:,} validation tokens ({meta['dtype']}) in {a.out}; "
          f"train with: {invocation()} train {shlex.quote(str(a.out))}")
    return 0


def cmd_clean(a) -> int:
    sys.stdout.write(clean_sources(a.sources, lowercase=a.lowercase, encoding=a.encoding))
    return 0


def cmd_presets(a) -> int:
    for name, p in presets.PRESETS.items():
        print(f"{name:20s} {p.description}")
    return 0


def cmd_info(a) -> int:
    from . import api

    d = api.load(a.run, device="cpu").info()
    if a.json:
        print(json.dumps(d))
        return 0
    t = d["training"]
    print(f"{d['run']}: {d['preset']} preset, {d['level']} level, {d['vocab']:,} tokens in the vocabulary")
    if d["base"]:
        print(f"fine-tuned from {d['base']['path']} (its manifest's SHA-256 {d['base']['manifest_sha256'][:16]}...)")
    print(f"\n{'layer':<14}{'kind':<28}{'output':<16}{'parameters':>12}")
    for r in d["layers"]:
        print(f"{r['layer']:<14}{r['kind']:<28}{r['output']:<16}{r['params']:>12,}")
    print(f"{'total':<58}{d['params']:>12,}")
    on = d["trained_on"]
    print(f"\ntrained on {on.get('train_chars', 0):,} characters ({len(on.get('train_works', []))} works), validated on "
          f"{on.get('val_chars', 0):,} ({', '.join(on.get('val_works', [])[:3])}), {on.get('device')}, {on.get('precision')}"
          + (f", {on['ranks']} ranks" if on.get("ranks", 1) > 1 else ""))
    if t["step"] is not None:
        print(f"training: step {t['step']:,}, epoch {t['epoch']}, {t['elapsed'] / 60:.1f} min, stopped: {t['stopped'] or 'running'}"
              + (f", {t['skipped']} steps skipped" if t["skipped"] else ""))
    if d["best_val_bpc"] is not None:
        print(f"best val bpc: {d['best_val_bpc']:.4f}")
    c = d["config"]
    print("settings: " + ", ".join(f"{k}={v}" for k, v in {**c["model"], **{k: c["train"][k] for k in (
        "seq_len", "batch_size", "lr", "minutes", "steps", "epochs")}}.items() if v not in (None, "", 0, 0.0)))
    grouped: dict[str, int] = {}  # a checkpoint's files as one entry
    for f in d["files"]:
        parts = f["name"].split("/")
        key = "/".join(parts[:2]) + "/" if len(parts) > 2 else f["name"]
        grouped[key] = grouped.get(key, 0) + f["bytes"]
    print("files: " + ", ".join(f"{n} ({_size(b)})" for n, b in grouped.items()))
    return 0


def _size(n: int) -> str:
    return next(f"{n / 1024 ** k:.1f} {u}" for k, u in ((3, "GB"), (2, "MB"), (1, "KB"), (0, "B")) if n >= 1024 ** k or k == 0)


def cmd_serve(a) -> int:
    from . import serve

    serve.serve(a.runs, config(a, ServeConfig), config(a, LoadConfig), a.unknown)
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "generate": cmd_generate, "write": cmd_write, "compare": cmd_compare,
            "experiment": cmd_experiment, "inspect": cmd_inspect, "plot": cmd_plot, "prepare": cmd_prepare,
            "clean": cmd_clean, "presets": cmd_presets, "serve": cmd_serve, "info": cmd_info}


def main(argv: list[str] | None = None) -> int:
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        a = build_parser().parse_args(argv)
        a.argv = argv  # for reports that quote their command
        return COMMANDS[a.command](a)
    except UserError as e:
        print(f"storyloom: error: {e}", file=sys.stderr)
        return 2
    except RankLost as e:
        print(f"storyloom: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
