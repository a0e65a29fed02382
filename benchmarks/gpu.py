"""Every GPU check of storyloom in one run of about 7 minutes: tests, training speed, quality, writing speed.

    python benchmarks/gpu.py --out results/           # on a machine with an NVIDIA GPU
    python benchmarks/gpu.py --only speed,writing     # some sections (env always runs)
    python benchmarks/gpu.py --device cpu --only speed,quality,writing --speed-seconds 4 --quality-minutes 0.2
                                                      # a dry run of the script itself, on a CPU

Sections, in order (each prints JSON lines as it goes; all are also written
to OUT/gpu.jsonl, and the test log to OUT/pytest-cuda.log):
- env: GPU, driver, torch, CUDA and cuDNN versions, the CPU; whether cuDNN's
  LSTM runs in bf16 here (the rest uses fp32 where it does not).
- tests (about 1 minute): `STORYLOOM_DEVICE=cuda python -m pytest -m device`,
  the device-relevant tests of the suite on the GPU.
- probe (about 20 s): characters/s of a bare training step (model, bf16
  cross-entropy, fused AdamW; no trainer around it) for a few LSTM widths,
  depths and batch sizes: what sizing the `gpu` preset rests on.
- speed (30 s each): the `default` preset through `storyloom.train`, and the
  same model in a plain `nn.LSTM` loop (benchmarks/train_speed.py's), both
  bf16: characters/s and model TFLOP/s (3 x (2*4H(I+H) per layer + 2HV) per
  character) against a GEMM-mix roofline (bf16, or fp32 where the run trains in fp32) of the run's own shapes
  (benchmarks/roofline.py's list), each timed here alone (synchronised, best of 3).
- quality (2 minutes): the `gpu` preset on the benchmark split (or each
  `--quality-spec`, as `storyloom compare` SPECs, one after another); val bpc
  and train bpc at each evaluation and an exact one-stream fp32 re-score of
  the best weights; its characters/s and roofline ratio are the `gpu`
  preset's speed figure.
- writing (about 20 s): batch-1 characters/s with the CUDA-graph step and
  with the eager step, the first character after a 1,000-character prompt,
  and `--num 256` aggregate characters/s, for the quality run and the
  default-preset run.
- average (about 2 minutes): the `default` preset for 3/4 of --speed-seconds each with the trainer's
  moving-average update, with the update it replaced (torch's AveragedModel.update_parameters), and with no
  average; alternated, twice.
- ddp: `benchmarks/scale.py` on the GPU(s): a plain process against a
  torchrun world of 1 (nccl, DDP) and, with more GPUs, a world of each count.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import storyloom  # noqa: E402
from storyloom import presets  # noqa: E402
from storyloom.compare import parse_spec  # noqa: E402
from storyloom.prepared import load_prepared  # noqa: E402
from storyloom.runtime import autocast  # noqa: E402
from machine import describe  # noqa: E402
from roofline import model_gemms  # noqa: E402
from train_speed import PlainLoop  # noqa: E402

SECTIONS = ("tests", "probe", "speed", "quality", "writing", "average", "ddp")
V = 84  # characters in the bundled corpus
DEV = "cuda"  # --device


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


class Log:
    def __init__(self, path: Path):
        self.f = open(path, "a")

    def __call__(self, **row) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()


def lstm_bf16_works() -> str:
    """'' if the LSTM trains under bf16 autocast here, else the error (cuDNN before 9.13 has no bf16 RNN)."""
    try:
        lstm = torch.nn.LSTM(16, 32, batch_first=True).to(DEV)
        with torch.autocast(DEV, dtype=torch.bfloat16):
            h, _ = lstm(torch.randn(4, 8, 16, device=DEV))
        h.float().sum().backward()
        sync()
        return ""
    except RuntimeError as e:
        return str(e).splitlines()[0]


def env(log: Log) -> str:
    gpu = {}
    if DEV == "cuda":
        p = torch.cuda.get_device_properties(0)
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
        gpu = dict(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                   memory_gib=round(p.total_memory / 2**30, 1), nvidia_smi=smi, cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    bf16 = lstm_bf16_works()
    log(kind="env", device=DEV, **gpu, machine=describe(), lstm_bf16=not bf16, lstm_bf16_error=bf16 or None)
    return "fp32" if bf16 else "bf16"


def tests(log: Log, out: Path) -> None:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-m", "device", "-q", "-p", "no:cacheprovider", "-rf"],
                       cwd=ROOT, capture_output=True, text=True, timeout=200,
                       env={**os.environ, "STORYLOOM_DEVICE": DEV,
                            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    (out / f"pytest-{DEV}.log").write_text(r.stdout + r.stderr)
    lines = (r.stdout + r.stderr).strip().splitlines()
    failed = [ln[len("FAILED "):] for ln in lines if ln.startswith("FAILED ")]
    log(kind="tests", exit_code=r.returncode, summary=lines[-1] if lines else "", failed=failed[:20],
        seconds=round(time.perf_counter() - t, 1))


# -- the machine: GEMMs at the run's shapes, in its precision ------------------------------
def gemm_tflops(M: int, K: int, N: int, dtype: torch.dtype) -> float:
    a, b = torch.randn(M, K, device=DEV, dtype=dtype), torch.randn(K, N, device=DEV, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = max(10, min(2000, int((2e11 if DEV == "cuda" else 2e9) / (2 * M * K * N))))
    times = []
    for _ in range(3):
        sync()
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        times.append((time.perf_counter() - t) / reps)
    return 2 * M * K * N / min(times) / 1e12


def config(spec: str):
    """A `storyloom compare` SPEC (preset:key=value,...) as the RunConfig it trains."""
    name, overrides = parse_spec(spec)
    return presets.build(name, overrides)


def shapes(spec: str) -> tuple[int, int, int, int, int]:
    cfg = config(spec)
    m, t = cfg.model, cfg.train
    I = {"embedding": m.embed, "onehot": V, "scalar": 1}[m.input]
    return t.batch_size, t.seq_len, I, m.hidden, m.layers


def flops_per_char(spec: str) -> float:
    _, _, I, H, L = shapes(spec)
    return 3 * (sum(2 * 4 * H * ((I if l == 0 else H) + H) for l in range(L)) + 2 * H * V)


def roofline(log: Log, spec: str, precision: str) -> float:
    """TFLOP/s of one training step's GEMMs at their measured rates in the run's precision (fp32 where the LSTM has
    no bf16 kernel, and where bf16 products would only be emulated): the model's arithmetic limit here."""
    B, T, I, H, L = shapes(spec)
    seconds = flops = 0.0
    for name, M, K, N, times in model_gemms(B, T, I, H, V, L):
        rate = gemm_tflops(M, K, N, torch.bfloat16 if precision == "bf16" else torch.float32)
        log(kind="gemm", spec=spec, gemm=name, M=M, K=K, N=N, tflops=round(rate, 2))
        seconds += times * 2 * M * K * N / (rate * 1e12)
        flops += times * 2 * M * K * N
    tf = flops / seconds / 1e12
    log(kind="roofline", spec=spec, precision=precision, tflops=round(tf, 2),
        note=f"the step's {precision} GEMMs at their measured rates")
    return tf


PROBES = [(768, 1, 32, 32), (768, 1, 256, 128), (1024, 2, 128, 128), (1024, 2, 256, 128), (1024, 3, 128, 128),
          (1536, 2, 128, 128), (1536, 2, 256, 128), (2048, 2, 128, 128)]  # (H, layers, B, T)


def step_rate(H: int, L: int, B: int, T: int, precision: str, seconds: float) -> float:
    """Characters/s of bare training steps of an embedding-128 LSTM LxH on random (B, T) batches."""
    from storyloom.config import ModelConfig
    from storyloom.model import LanguageModel

    model = LanguageModel(ModelConfig(vocab_size=V, embed=128, hidden=H, layers=L, dropout=0.25)).to(DEV)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x, y = torch.randint(0, V, (B, T), device=DEV), torch.randint(0, V, (B, T), device=DEV)

    def step():
        with autocast(precision, torch.device(DEV)):
            logits, _ = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    sync()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        step()
        n += 1
        if n % 5 == 0:  # keep the queue short, so the clock stops soon after the last step
            sync()
    sync()
    return n * B * T / (time.perf_counter() - t)


def probe(log: Log, precision: str, seconds: float = 1.5) -> None:
    for H, L, B, T in PROBES:
        cps = step_rate(H, L, B, T, precision, seconds)
        f = 3 * (sum(2 * 4 * H * ((128 if l == 0 else H) + H) for l in range(L)) + 2 * H * V)
        log(kind="probe", H=H, layers=L, B=B, T=T, precision=precision, chars_per_s=round(cps), model_tflops=round(cps * f / 1e12, 2),
            ms_per_step=round(1000 * B * T / cps, 2))


def trained_speed(run: Path, warm: float = 0.25) -> dict:
    """Characters/s over the run's logged steps after the first quarter (cuDNN plans, allocator warm-up)."""
    rows = [r for r in storyloom.metrics(run) if "chars_per_s" in r]
    late = rows[int(len(rows) * warm):] or rows
    if not late:
        raise RuntimeError(f"{run}: no step was logged; train longer")
    return {"chars_per_s": round(statistics.median(r["chars_per_s"] for r in late), 1), "steps": storyloom.status(run)["step"]}


def speed(log: Log, prep: Path, work: Path, precision: str, seconds: float) -> Path:
    roof = roofline(log, "default", precision)
    run = storyloom.train([str(prep)], out=work / "default", preset="default", minutes=seconds / 60, evals=1, patience=0,
                          precision=precision, device=DEV, progress=False, log_every=10)
    s = trained_speed(run)
    tf = s["chars_per_s"] * flops_per_char("default") / 1e12
    log(kind="speed", arm="storyloom default", precision=precision, seconds=seconds, **s, model_tflops=round(tf, 3),
        roofline_tflops=round(roof, 2), ratio=round(tf / roof, 3))
    corpus, _ = load_prepared(prep)
    loop = PlainLoop(np.asarray(corpus.train), corpus.val, len(corpus.tokenizer), precision, torch.device(DEV))
    end = time.perf_counter() + seconds / 4
    while time.perf_counter() < end:  # the same warm-up share the storyloom arm leaves out
        loop.step()
    sync()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds * 3 / 4:
        loop.step()
        steps += 1
    sync()
    cps = steps * loop.learned_per_step / (time.perf_counter() - t0)
    tf = cps * flops_per_char("default") / 1e12
    log(kind="speed", arm="plain nn.LSTM loop, default model", precision=precision, seconds=seconds, chars_per_s=round(cps, 1),
        steps=steps, model_tflops=round(tf, 3), roofline_tflops=round(roof, 2), ratio=round(tf / roof, 3),
        storyloom_over_plain=round(s["chars_per_s"] / cps, 3))
    return run


def quality(log: Log, prep: Path, work: Path, precision: str, minutes: float, spec: str) -> Path:
    roof = roofline(log, spec, precision)
    name, overrides = parse_spec(spec)
    t = time.perf_counter()
    run = storyloom.train([str(prep)], out=work / re.sub(r"[^A-Za-z0-9_.=-]+", "_", spec), preset=name, minutes=minutes,
                          precision=precision, device=DEV, progress=False, **overrides)
    wall = time.perf_counter() - t
    rows = storyloom.metrics(run)
    trains = [r for r in rows if "train_bpc" in r]
    for r in rows:
        if "val_bpc" in r:
            tr = [x["train_bpc"] for x in trains if x["step"] <= r["step"]]
            log(kind="quality_eval", spec=spec, step=r["step"], elapsed_s=r["elapsed_s"], val_bpc=round(r["val_bpc"], 4),
                train_bpc=round(tr[-1], 4) if tr else None)
    s = trained_speed(run)
    tf = s["chars_per_s"] * flops_per_char(spec) / 1e12
    corpus, _ = load_prepared(prep)
    t0 = time.perf_counter()
    exact = storyloom.load(run, device=DEV).score(corpus.tokenizer.decode(corpus.val))
    st = storyloom.status(run)
    B, T = shapes(spec)[:2]
    log(kind="quality", spec=spec, minutes=minutes, precision=precision, wall_s=round(wall, 1), **s,
        epochs=round(s["steps"] * B * T / len(corpus.train), 2), model_tflops=round(tf, 3), roofline_tflops=round(roof, 2),
        ratio=round(tf / roof, 3), best_val_bpc_during=round(st["best_bpc"], 4), stopped=st["stopped"],
        last_train_bpc=round(trains[-1]["train_bpc"], 4) if trains else None,
        exact_val_bpc=round(exact["bpc"], 4), exact_chars=exact["chars"], rescore_s=round(time.perf_counter() - t0, 2),
        target="<= 1.75 val bpc in 2 minutes", met=exact["bpc"] <= 1.75)
    return run


def timed(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def writing(log: Log, runs: dict[str, Path], length: int = 2000) -> None:
    text = storyloom.clean_sources(["shakespeare"])
    p40, p1000 = text[10000:10040], text[20000:21000]
    for name, run in runs.items():
        m = storyloom.load(run, device=DEV)
        graphed = m.decoder.graphs  # what storyloom does here: graphs for the LSTM on CUDA
        for graphs in (True, False) if graphed else (False,):
            m.decoder.graphs = graphs
            s = timed(lambda: m.generate(p40, length, temperature=1.0, seed=0))
            log(kind="writing", run=name, what="batch-1 chars/s", cuda_graph=graphs, chars_per_s=round(length / s), chars=length)
        m.decoder.graphs = graphed
        s = timed(lambda: next(iter(m.stream(p1000, 10, temperature=1.0, seed=0))), repeats=5)
        log(kind="writing", run=name, what="first character after a 1,000-character prompt", ms=round(1000 * s, 2))
        num, n = 256, 500
        s = timed(lambda: m.samples(p40, num=num, length=n, temperature=1.0, seed=0), repeats=1)
        log(kind="writing", run=name, what="--num 256 aggregate chars/s", chars_per_s=round(num * n / s),
            per_sample_chars_per_s=round(n / s), seconds=round(s, 2))
        a = m.generate(p40, 300, temperature=1.0, seed=7)
        log(kind="writing", run=name, what="seeded sample repeats", same=a == m.generate(p40, 300, temperature=1.0, seed=7),
            sample=a[:120])


def update_before(average, model) -> None:
    """The update as the trainer made it before train.update_average: torch's AveragedModel.update_parameters, over
    the ninth session's in-place update, which weighed the step on the count's device (no wait for the GPU)."""

    def update(averaged, current, n):
        w = (0.1 * n.to(averaged[0].dtype) + 1).reciprocal()
        for a, p in zip(averaged, current):
            a.lerp_(p, w)

    average.multi_avg_fn = update
    average.update_parameters(model)


def average(log: Log, prep: Path, work: Path, precision: str, seconds: float, rounds: int = 2) -> None:
    """What the weights' moving average costs a training step: the `default` preset with the trainer's update
    (train.update_average), with the update it replaced (update_before), and with no average; alternated, `rounds`
    times."""
    tr = sys.modules["storyloom.train"]  # the module: `storyloom.train`, the attribute, is the API's function
    ours = tr.update_average
    try:
        for r in range(rounds):
            for i, (arm, share) in enumerate((("update_average", 0.1), ("AveragedModel.update_parameters", 0.1),
                                              ("none", 0.0))):
                tr.update_average = ours if arm != "AveragedModel.update_parameters" else update_before
                run = storyloom.train([str(prep)], out=work / f"average-{r}-{i}", preset="default",
                                      minutes=seconds / 60, evals=1, patience=0, average=share, precision=precision,
                                      device=DEV, progress=False, log_every=10)
                log(kind="average", arm=arm, average=share, round=r, seconds=seconds, **trained_speed(run),
                    best_val_bpc=round(storyloom.status(run)["best_bpc"], 4))
    finally:
        tr.update_average = ours


def ddp(log: Log, seconds: float) -> None:
    gpus = torch.cuda.device_count() if DEV == "cuda" else 2
    worlds = ",".join(str(w) for w in (1, 2, 4, 8) if w <= gpus)
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--device", DEV, "--worlds", worlds,
                        "--torchrun-one", "--seconds", str(seconds)], capture_output=True, text=True)
    for line in p.stdout.splitlines():
        log(kind="ddp", **json.loads(line))
    if p.returncode:
        log(kind="ddp", error=p.stderr[-3000:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".", help="directory for gpu.jsonl and pytest-cuda.log")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run, of {', '.join(SECTIONS)}")
    ap.add_argument("--speed-seconds", type=float, default=30.0)
    ap.add_argument("--quality-minutes", type=float, default=2.0)
    ap.add_argument("--quality-spec", action="append", metavar="SPEC",
                    help="what the quality section trains, as a `storyloom compare` SPEC (repeatable; default: gpu)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a dry run of this script")
    a = ap.parse_args()
    only = [s for s in a.only.split(",") if s]
    global DEV
    DEV = a.device
    if DEV == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py: no CUDA GPU visible (--device cpu for a dry run)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "gpu.jsonl")
    t0 = time.perf_counter()
    precision = env(log)
    work = Path(tempfile.mkdtemp(prefix="storyloom-gpu-"))
    prep = work / "prepared"
    storyloom.prepare(["shakespeare"], prep, progress=False)  # the bundled corpus, its fixed benchmark split
    runs: dict[str, Path] = {}
    for name in only:
        t = time.perf_counter()
        try:
            if name == "tests":
                tests(log, out)
            elif name == "probe":
                probe(log, precision)
            elif name == "speed":
                runs[f"default ({a.speed_seconds:g} s)"] = speed(log, prep, work, precision, a.speed_seconds)
            elif name == "quality":
                for spec in a.quality_spec or ["gpu"]:
                    try:
                        runs[f"{spec} ({a.quality_minutes:g} min)"] = quality(log, prep, work, precision, a.quality_minutes, spec)
                    except Exception as e:
                        log(kind="error", section=name, spec=spec, error=f"{type(e).__name__}: {e}",
                            traceback=traceback.format_exc()[-3000:])
            elif name == "writing":
                if not runs:
                    runs["default (1 step)"] = storyloom.train([str(prep)], out=work / "w", steps=1, evals=1, device=DEV,
                                                               progress=False)
                writing(log, runs)
            elif name == "average":
                average(log, prep, work, precision, a.speed_seconds * 3 / 4)
            elif name == "ddp":
                ddp(log, a.speed_seconds)
        except Exception as e:  # one broken section must not hide the others' figures
            log(kind="error", section=name, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
        log(kind="section", section=name, seconds=round(time.perf_counter() - t, 1), total_s=round(time.perf_counter() - t0, 1))


if __name__ == "__main__":
    main()
