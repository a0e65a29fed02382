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
    """Cores this process may run on, counting a core's hyperthreads once, and no more than a cgroup's CPU limit
    allows, rounded to the nearest whole CPU (at least one). A limit rations CPU time, and threads beyond it spend
    part of theirs waiting for one another at each parallel region's end: on 2 Zen 5 cores, training the default
    with 2 threads ran at 0.76x one thread's speed under a limit of 0.5 CPU and 0.83x under 1, alike at 1.25, and
    at 1.27x one thread's at 1.5 (benchmarks/quota.py)."""
    n, limit = max(len(cores()), 1), cpu_limit()
    return n if limit is None else max(1, min(n, int(limit + 0.5)))


def cpu_limit(mountinfo: str = "/proc/self/mountinfo", cgroup: str = "/proc/self/cgroup") -> float | None:
    """The CPUs this process's cgroups let it use (a container's `--cpus`, a Kubernetes pod's CPU limit): the
    tightest of cgroup v2's cpu.max or v1's cpu.cfs_quota_us over cpu.cfs_period_us, in its own cgroup and every
    one above it that is mounted; None where none is set. Written here because nothing else reads it: torch and
    Python count the CPUs in the affinity mask, which such a limit leaves whole (all 64 of a 64-CPU host)."""
    try:
        with open(mountinfo) as f:
            mounts = [line.split() for line in f]
        with open(cgroup) as f:
            groups = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return None
    limits = []
    for fields in mounts:
        sep = fields.index("-") if "-" in fields else len(fields)  # optional fields end at a lone "-"
        if len(fields) < sep + 4:
            continue
        root, point, fstype, options = fields[3], fields[4], fields[sep + 1], fields[sep + 3].split(",")
        if fstype == "cgroup2":  # v2: one hierarchy, its line "0::PATH"
            path = next((g[2] for g in groups if len(g) == 3 and g[0] == "0" and g[1] == ""), None)
        elif fstype == "cgroup" and "cpu" in options:  # v1: the hierarchy whose controllers include cpu
            path = next((g[2] for g in groups if len(g) == 3 and "cpu" in g[1].split(",")), None)
        else:
            continue
        if path is None:
            continue
        # the mount shows the hierarchy from `root` down (a container sees its own cgroup as the top)
        inside = path[len(root):] if path == root or path.startswith(root.rstrip("/") + "/") else ""
        top = os.path.normpath(point)
        here = os.path.normpath(top + "/" + inside.strip("/"))
        while True:
            limit = _cgroup_limit(here, fstype)
            if limit is not None:
                limits.append(limit)
            if here == top or not here.startswith(top):
                break
            here = os.path.dirname(here)
    return min(limits) if limits else None


def _cgroup_limit(folder: str, fstype: str) -> float | None:
    try:
        if fstype == "cgroup2":
            with open(os.path.join(folder, "cpu.max")) as f:
                quota, period = f.read().split()[:2]  # "max 100000" where no limit is set
        else:
            with open(os.path.join(folder, "cpu.cfs_quota_us")) as f:
                quota = f.read().strip()  # "-1" where no limit is set
            with open(os.path.join(folder, "cpu.cfs_period_us")) as f:
                period = f.read().strip()
        q, p = int(quota), int(period)
    except (OSError, ValueError):
        return None
    return q / p if q > 0 and p > 0 else None
