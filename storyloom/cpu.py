"""The CPU this process runs on, read from the operating system: its vendor, model and flags, and its physical
cores. Nothing here imports torch, so `storyloom prepare` (which sizes its pool of workers by the cores) starts
without it."""

from __future__ import annotations

import os
from typing import NamedTuple


class CPU(NamedTuple):
    """The first CPU in /proc/cpuinfo: vendor_id ("GenuineIntel", "AuthenticAMD"), model name, flags, and the
    family and model numbers; empty strings, no flags and 0 where there is none. `auto` precision reads the
    vendor and flags, the benchmarks' machine line all of it (two AMD EPYCs with the same name and flags, Zen 4
    and Zen 5, differ only in family)."""

    vendor: str
    model: str
    flags: frozenset[str]
    family: int = 0
    model_number: int = 0


def cpu_info() -> CPU:
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
                if key.strip() == "flags":  # the first CPU's record ends its fields of interest
                    break
    except OSError:
        pass
    def number(key: str) -> int:
        value = fields.get(key, "")
        return int(value) if value.isdigit() else 0

    return CPU(fields.get("vendor_id", ""), fields.get("model name", ""), frozenset(fields.get("flags", "").split()),
               number("cpu family"), number("model"))


def cores() -> list[frozenset[int]]:
    """The logical CPUs this process may run on, one set per physical core (a core's hyperthreads together), in the
    order of their first CPU. Without sysfs topology (not Linux, or a container hiding it) each CPU is a core."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    groups: dict[str, set[int]] = {}
    for c in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list") as f:
                key = f.read().strip()
        except OSError:
            key = f"cpu{c}"
        groups.setdefault(key, set()).add(c)
    return [frozenset(g) for g in groups.values()]


def physical_cores() -> int:
    """Cores this process may run on, counting a core's hyperthreads once."""
    return max(len(cores()), 1)
