"""The machine a figure was measured on, for every benchmark's `config` line.

    python benchmarks/machine.py        # prints it as one JSON line

These machines differ from session to session (2 cores of an Intel Sapphire
Rapids with or without AMX, or of an AMD EPYC; a GPU or none), and a figure
compares only with its twin on the same kind: every script records this.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from storyloom import cpu, runtime  # noqa: E402

FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")


def describe() -> dict:
    """CPU model and vendor, its matrix extensions (AMX or not, and whether oneDNN may use it), cores, GPU,
    torch."""
    info = cpu.cpu_info()
    model, flags = info.model or platform.processor() or platform.machine(), info.flags
    vendor = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}.get(info.vendor, model)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    # `ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16` runs this CPU as one without AMX, the way to measure that machine
    # kind on this one: a figure taken so records the cap, and says AMX is off
    cap = runtime.onednn_isa_cap()
    amx = "amx_bf16" in flags and runtime.onednn_may_use_amx()
    return {"cpu": model, "vendor": vendor, "family": info.family, "model_number": info.model_number,
            "core": amd_core(info.family, flags) if vendor == "AMD" else None, "amx": amx,
            "cpu_flags": [f for f in FLAGS if f in flags], "onednn_max_isa": cap, "cpus": cpus, "gpu": gpu,
            "torch": torch.__version__, "python": platform.python_version()}


def amd_core(family: int, flags: frozenset[str]) -> str | None:
    """AMD's core generation from the CPU family: a cloud's EPYC is often named just "AMD EPYC", and Zen 4 and
    Zen 5 have the same flags, but Zen 5 runs AVX-512 a full 512 bits wide where Zen 4 splits it in two halves.
    Family 25 holds Zen 3 and Zen 4; only Zen 4 has AVX-512."""
    if family == 25:
        return "Zen 4" if "avx512f" in flags else "Zen 3"
    return {23: "Zen or Zen 2", 26: "Zen 5"}.get(family)


def label(d: dict | None = None) -> str:
    """A short name for tables: "Intel Xeon, AMX", "AMD EPYC, Zen 3, AVX2 only", "NVIDIA H200". Without AMX it
    names the widest vector instructions, since two AMD EPYCs (Zen 3: AVX2; Zen 4 and 5: AVX512-BF16) differ more
    than their names do."""
    d = d or describe()
    if d["gpu"]:
        return d["gpu"]
    name = "AMD EPYC" if d["vendor"] == "AMD" else "Intel Xeon"
    if d.get("core"):  # recorded since the nineteenth session
        name = f"{name}, {d['core']}"
    cap, flags = d.get("onednn_max_isa"), d["cpu_flags"]
    widest = ("AVX512-BF16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags
              else "AVX2 only" if "avx2" in flags else "no AVX2")
    if d["amx"]:
        isa = "AMX"
    elif cap and "amx_bf16" in flags:
        isa = f"AMX off (oneDNN capped at {cap})"
    else:  # no AMD CPU has AMX, so only an Intel one says it lacks it
        isa = widest if d["vendor"] == "AMD" else f"{widest}, no AMX"
    return f"{name}, {isa}, {d['cpus']} cores"


if __name__ == "__main__":
    print(json.dumps({**describe(), "label": label()}))
