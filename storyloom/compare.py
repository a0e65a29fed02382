"""Which level wins? Train several configurations for the same wall-clock
budget on the same split, score each on the same validation text in bits
per character, and write a report (report.md) and the curves (curves.png).

A SPEC is a preset name with optional overrides of any `train` setting:
`default`, `default:level=bpe,vocab_size=2000`, `word:hidden=512,tie=false`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
import time
from pathlib import Path

from . import api, plots, presets
from .config import DataConfig, ModelConfig, TrainConfig, settings
from .errors import UserError
from .model import n_params

SAMPLE_CHARS = 300
FIELDS = {f.name: f for cls in (ModelConfig, DataConfig, TrainConfig) for f in settings(cls)}  # what a SPEC may set


def _value(key: str, raw: str, spec: str):
    """raw typed like the setting's default: bool, int, float, str, or a +-separated tuple."""
    default = FIELDS[key].default if FIELDS[key].default is not dataclasses.MISSING else FIELDS[key].default_factory()
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if isinstance(default, tuple):
            return tuple(x for x in raw.split("+") if x)
        return type(default)(raw)
    except ValueError:
        raise UserError(f"{spec}: {key}={raw!r} is not a valid {type(default).__name__}") from None


def parse_spec(spec: str) -> tuple[str, dict]:
    """'preset:key=value,key=value' -> (preset, overrides)."""
    name, _, rest = spec.partition(":")
    if name not in presets.PRESETS:
        raise UserError(f"{spec}: {name!r} is not a preset; choose one of: {', '.join(presets.PRESETS)}")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, eq, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in FIELDS:
            raise UserError(f"{spec}: {item!r} is not key=value with a train setting as key (for example level=bpe)")
        overrides[key] = _value(key, raw.strip(), spec)
    return name, overrides


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", spec.replace(":", "__")).strip("_")


def _sample(m: api.Writer, seed: int) -> str:
    out = ""
    for piece in m.stream("", length=0, seed=seed):
        out += piece
        if len(out) >= SAMPLE_CHARS:
            break
    return out[:SAMPLE_CHARS]


def measure(path: Path, spec: str, val_text: str) -> dict:
    m = api.load(path)
    rows = api.metrics(path)
    speed = [r for r in rows if "tokens_per_s" in r]
    r = m.score(val_text, unknown="replace")
    return {
        "spec": spec, "run": str(path), "level": m.config.data.level, "vocab": len(m.tokenizer),
        "params": n_params(m.model),
        "tokens_per_s": statistics.median(x["tokens_per_s"] for x in speed) if speed else None,
        "chars_per_s": statistics.median(x["chars_per_s"] for x in speed) if speed else None,
        "val_bpc": r["bpc"], "token_perplexity": r["token_perplexity"], "val_tokens": r["tokens"], "val_chars": r["chars"],
        "minutes": max((x.get("elapsed_s", 0) for x in rows), default=0) / 60,
        "curve": [(x["elapsed_s"], x["val_bpc"]) for x in rows if "val_bpc" in x],
        "sample": _sample(m, seed=1),
    }


def report(results: list[dict], minutes: float, sources, command: str) -> str:
    lines = [
        "# storyloom compare", "",
        f"Each run trained for {minutes:g} minutes of wall-clock time on the same split "
        f"({', '.join(sources) or 'the bundled corpus and its benchmark split'}). val bpc is every run's best weights "
        "scored on the same validation text, read as one stream: total nats (plus the spelling of each <unk> at word "
        "level) over its characters, divided by ln 2. Token perplexity is per token of the run's own tokenizer, so it "
        "compares only within a level.", "",
        f"Command: `{command}`", "",
        "| spec | level | vocab | parameters | tokens/s | chars/s | val bpc | token perplexity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        speed = (f"{r['tokens_per_s']:,.0f}", f"{r['chars_per_s']:,.0f}") if r["tokens_per_s"] else ("-", "-")
        lines.append(f"| `{r['spec']}` | {r['level']} | {r['vocab']:,} | {r['params']:,} | {speed[0]} | {speed[1]} | "
                     f"**{r['val_bpc']:.4f}** | {r['token_perplexity']:.2f} |")
    lines += ["", "![validation bpc against wall-clock time](curves.png)", ""]
    for r in results:
        lines += [f"## `{r['spec']}`: a {SAMPLE_CHARS}-character sample (seed 1, temperature 0.8)", "", "```",
                  r["sample"].replace("```", "'''"), "```", ""]
    return "\n".join(lines)


def compare(specs: list[str], sources=(), *, minutes: float = 10.0, out: str | Path, overwrite: bool = False,
            progress: bool = True, command: str = "", **flags) -> Path:
    """Train every SPEC for `minutes` on the same data, then write out/report.md, out/curves.png and out/results.jsonl."""
    if not specs:
        raise UserError("give at least one SPEC to compare, for example: default default:level=bpe word")
    if not minutes or minutes <= 0:
        raise UserError(f"--minutes must be > 0, got {minutes!r}")
    parsed = [parse_spec(s) for s in specs]
    for preset, overrides in parsed:  # every setting validated before any training starts
        presets.build(preset, {**flags, **overrides})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for spec, (preset, overrides) in zip(specs, parsed):
        t = time.perf_counter()
        path = api.train(sources, out=out / "runs" / _slug(spec), preset=preset, overwrite=overwrite, progress=progress,
                         **{**flags, **overrides, "minutes": minutes, "steps": 0, "epochs": 0})
        results.append(measure(path, spec, api.validation_text(path)))
        results[-1]["wall_s"] = round(time.perf_counter() - t, 1)
        (out / "results.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "curve"}) + "\n" for r in results))
    plots.compare_curves(results, out / "curves.png")
    (out / "report.md").write_text(report(results, minutes, [str(s) for s in sources], command or "storyloom.compare(...)"))
    return out
