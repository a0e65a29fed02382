"""Issue 16 ("Fast on every machine") measured on this machine in one run: each item's figures against its target.

    python benchmarks/issue16.py --out benchmarks/results/issue16-KIND     # every item, about 40 minutes on 2 cores
    python benchmarks/issue16.py --out /tmp/i16 --items 1,2,3              # some items (item 4 is 35 of the minutes)
    python benchmarks/issue16.py --out /tmp/i16 --quick                    # every script cut short: checks this one

The items' own benchmarks, one after another (each compares its arms side by side in its own run; nothing else
should run on the machine meanwhile), their JSON lines kept in OUT/<script>.jsonl and their standard error in
OUT/<script>.err:

1. `generate.py --decode fp32,int8`: batch-1 writing through `auto`'s decode precision on a CPU (int8), and the
   first character after a 1,000-character prompt.
2. `big_corpus.py --gb 1 --steps 20`: `storyloom prepare` of one 1 GB file, one worker per core: MB/s and peak RSS.
3. `contention.py --settings default,storyloom --rounds 3 --seconds 8`: training and its evaluation beside one busy
   process, and alone against torch's own threading.
4. `roofline.py --seconds 30 --lstm-kernels torch,loops`, `kernel_choice.py` (which kernel `auto` trains with
   here), and `sweep.py --minutes 10 --evals 5` of the default preset for seeds 1-3: the trainer against its
   roofline, and the 10-minute quality.

Then OUT/summary.jsonl, and on standard output a markdown table of the figures, each target and whether it is met.
A machine line (benchmarks/machine.py) heads both. With --quick every script runs for seconds: the table then
checks that the parts run and read, and its figures are not figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from machine import describe  # noqa: E402
from storyloom import runtime  # noqa: E402

HERE = Path(__file__).resolve().parent
SEEDS = (1, 2, 3)


def commands(quick: bool) -> dict[int, list[tuple[str, list[str]]]]:
    """Per item, the (script, arguments) that measure it; --quick cuts each to seconds."""
    specs = [f"default:seed={s}" for s in (SEEDS[:1] if quick else SEEDS)]
    return {
        1: [("generate.py", ["--decode", "fp32,int8"] + (["--length", "200"] if quick else []))],
        2: [("big_corpus.py", ["--gb", "0.05", "--steps", "2"] if quick else ["--gb", "1", "--steps", "20"])],
        3: [("contention.py", ["--settings", "default,storyloom"]
             + (["--rounds", "1", "--seconds", "2"] if quick else ["--rounds", "3", "--seconds", "8"]))],
        4: [("roofline.py", ["--lstm-kernels", "torch,loops"]
             + (["--seconds", "2", "--rounds", "1"] if quick else ["--seconds", "30"])),
            ("kernel_choice.py", ["--trials", "1" if quick else "6"]),
            ("sweep.py", ["--minutes", "0.1" if quick else "10", "--evals", "1" if quick else "5", *specs])],
    }


def rows(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:  # a script's stray print
            pass
    return out


def judged(item: str, figure: str, target: str, met: bool | None) -> dict:
    return {"item": item, "figure": figure, "target": target, "met": met}


def item1(out: Path) -> list[dict]:
    int8 = next((r for r in rows(out / "generate.jsonl") if r.get("kind") == "decode" and r.get("decode") == "int8"), None)
    if int8 is None:
        return [judged("1. batch-1 writing (int8, auto's on a CPU)", "no int8 row: see generate.err", "", None)]
    return [judged("1. batch-1 writing (int8, auto's on a CPU)", f"{int8['chars_per_s']:,} chars/s (runs {int8['runs']})",
                   ">= 5,000 chars/s", int8["chars_per_s"] >= 5000),
            judged("1. first character after 1,000", f"{int8['first_char_ms']} ms", "<= 50 ms", int8["first_char_ms"] <= 50)]


def item2(out: Path) -> list[dict]:
    one = next((r for r in rows(out / "big_corpus.jsonl") if r.get("kind") == "prepare" and r.get("source") == "one file"
                and r.get("workers") == "one per core" and "path" not in r and "level" not in r), None)
    if one is None:
        return [judged("2. prepare of one file", "no row: see big_corpus.err", "", None)]
    return [judged("2. prepare of one file, one worker per core", f"{one['mb_per_s']} MB/s", ">= 100 MB/s", one["mb_per_s"] >= 100),
            judged("2. its peak RSS", f"{one['peak_rss_mb']} MB", "< 2,048 MB", one["peak_rss_mb"] < 2048)]


def item3(out: Path) -> list[dict]:
    ratio = {r["setting"]: r for r in rows(out / "contention.jsonl") if r.get("kind") == "ratio"}
    if not {"default", "storyloom"} <= ratio.keys():
        return [judged("3. sharing the cores", "no ratio rows: see contention.err", "", None)]
    s, d = ratio["storyloom"], ratio["default"]
    alone = s["train_alone"] / d["train_alone"]
    return [judged("3. training kept beside a busy process", f"{s['train_kept']:.1%}", ">= 35%", s["train_kept"] >= 0.35),
            judged("3. training-time evaluation, shared / alone", f"{s['eval_slowdown']}x", "<= 3x", s["eval_slowdown"] <= 3),
            judged("3. training alone against torch's threading", f"{alone:.3f}x ({s['train_alone']:,} against "
                   f"{d['train_alone']:,} chars/s)", ">= 0.90x", alone >= 0.9)]


def item4(out: Path, precision: str) -> list[dict]:
    found = []
    summary = {r["precision"]: r for r in rows(out / "kernel_choice.jsonl") if r.get("kind") == "summary"}
    picks = summary.get(precision, {}).get("picks", {})
    kernel = max(picks, key=picks.get) if picks else "torch"  # kernel_choice exits where lstm.cpp cannot be built
    trainer = {r["lstm_kernel"]: r for r in rows(out / "roofline.jsonl")
               if r.get("kind") == "trainer" and r.get("precision") == precision}
    if kernel in trainer:
        r = trainer[kernel]
        others = ", ".join(f"{k} {v['ratio']}" for k, v in trainer.items() if k != kernel)
        pick = f"auto's pick in {picks[kernel]} of {sum(picks.values())} trials" if picks else "auto untimed here"
        found.append(judged(f"4. trainer against its {precision} roofline, through {kernel} ({pick})",
                            f"{r['ratio']} ({r['chars_per_s']:,.0f} chars/s{'; ' + others if others else ''})",
                            ">= 0.65", r["ratio"] >= 0.65))
    else:
        found.append(judged("4. trainer against its roofline", "no trainer row: see roofline.err", "", None))
    finals = [r["val_bpc"][-1] for r in rows(out / "sweep.jsonl") if r.get("spec", "").startswith("default:seed=")
              and r.get("val_bpc")]
    if finals:
        mean = sum(finals) / len(finals)
        found.append(judged(f"4. the default at its time limit, {len(finals)} seed(s)",
                            f"{mean:.4f} ({' / '.join(f'{b:.4f}' for b in finals)})", "<= 1.85 bpc (10 minutes)", mean <= 1.85))
    else:
        found.append(judged("4. the default at 10 minutes", "no runs: see sweep.err", "", None))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for each script's lines, the summary and the table")
    ap.add_argument("--items", default="1,2,3,4", help="comma-separated, of 1-4")
    ap.add_argument("--quick", action="store_true", help="every script for seconds: checks this script, not the machine")
    a = ap.parse_args()
    try:
        items = sorted({int(i) for i in a.items.split(",")})
    except ValueError:
        ap.error(f"--items {a.items}: comma-separated numbers of 1-4")
    if not set(items) <= {1, 2, 3, 4}:
        ap.error(f"--items {a.items}: the issue's items are 1-4")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = describe()
    precision = runtime.resolve_precision("auto", torch.device("cpu"))
    plan = commands(a.quick)
    start = time.perf_counter()
    for item in items:
        for script, args in plan[item]:
            name = script.removesuffix(".py")
            print(f"issue16: item {item}: {script} {' '.join(args)} ({(time.perf_counter() - start) / 60:.1f} min in)",
                  file=sys.stderr, flush=True)
            with open(out / f"{name}.jsonl", "w") as so, open(out / f"{name}.err", "w") as se:
                code = subprocess.run([sys.executable, str(HERE / script), *args], stdout=so, stderr=se).returncode
            if code:
                print(f"issue16: {script} exited {code}: see {out / f'{name}.err'}", file=sys.stderr, flush=True)
    judge = {1: item1, 2: item2, 3: item3, 4: lambda o: item4(o, precision)}
    found = [row for item in items for row in judge[item](out)]
    head = {"kind": "config", "machine": machine, "items": items, "quick": a.quick, "training_precision": precision,
            "minutes": round((time.perf_counter() - start) / 60, 1)}
    (out / "summary.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [head, *({"kind": "item", **f} for f in found)]))
    print(json.dumps(head))
    print("\n| item | measured | target | met |\n|---|---|---|---|")
    for f in found:
        print(f"| {f['item']} | {f['figure']} | {f['target']} | {'-' if f['met'] is None else 'yes' if f['met'] else '**no**'} |")
    if a.quick:
        print("\n(--quick: every script ran for seconds; these are not the machine's figures)")


if __name__ == "__main__":
    main()
