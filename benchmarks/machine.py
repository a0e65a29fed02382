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

import torch

FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return model, flags


def isa_cap() -> str | None:
    """oneDNN's ceiling on the instructions it uses, where one is set: `ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`
    makes oneDNN (bf16 matmuls, the LSTM kernel) run as on the same CPU without AMX, the way to measure that
    machine kind on this one. A figure taken so is labelled with it."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or None


def describe() -> dict:
    """CPU model and vendor, its matrix extensions (AMX or not, and whether oneDNN may use it), cores, GPU,
    torch."""
    model, flags = _cpuinfo()
    vendor = "AMD" if "AMD" in model or "authenticamd" in flags else "Intel" if "Intel" in model else model
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    cap = isa_cap()
    amx = "amx_bf16" in flags and (cap is None or "AMX" in cap.upper() or cap.upper() == "ALL")
    return {"cpu": model, "vendor": vendor, "amx": amx, "cpu_flags": [f for f in FLAGS if f in flags],
            "onednn_max_isa": cap, "cpus": cpus, "gpu": gpu, "torch": torch.__version__, "python": platform.python_version()}


def label(d: dict | None = None) -> str:
    """A short name for tables: "Intel Xeon, AMX", "AMD EPYC", "NVIDIA H200"."""
    d = d or describe()
    if d["gpu"]:
        return d["gpu"]
    name = "AMD EPYC" if d["vendor"] == "AMD" else "Intel Xeon"
    cap = d.get("onednn_max_isa")
    amx = "AMX" if d["amx"] else f"AMX off (oneDNN capped at {cap})" if cap and "amx_bf16" in d["cpu_flags"] else "no AMX"
    return f"{name}, {amx}, {d['cpus']} cores"


if __name__ == "__main__":
    print(json.dumps({**describe(), "label": label()}))
