import pytest

from storyloom import cpu


def test_cpu_info_reads_this_machines_vendor_model_and_flags():
    info = cpu.cpu_info()
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        assert info == ("", "", frozenset(), 0, 0)
        return
    first = text.split("\n\n")[0]  # the first CPU's record
    assert f"vendor_id\t: {info.vendor}" in first or not info.vendor
    assert f": {info.model}\n" in first or not info.model
    flags = next((line.split(":", 1)[1].split() for line in first.splitlines() if line.startswith("flags")), [])
    assert info.flags == frozenset(flags)
    numbers = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}
    assert info.family == int(numbers.get("cpu family", "0")) and info.model_number == int(numbers.get("model", "0"))


def test_cpu_info_parses_a_record(tmp_path, monkeypatch):
    record = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
              "model name\t: AMD EPYC 9R14 96-Core Processor\nflags\t\t: fpu avx2 avx512_bf16\n\n"
              "processor\t: 1\nvendor_id\t: Other\ncpu family\t: 6\nflags\t\t: fpu\n")
    real = open

    def fake_open(path, *a, **k):
        if path == "/proc/cpuinfo":
            (tmp_path / "cpuinfo").write_text(record)
            return real(tmp_path / "cpuinfo", *a, **k)
        return real(path, *a, **k)

    monkeypatch.setattr("builtins.open", fake_open)
    assert cpu.cpu_info() == ("AuthenticAMD", "AMD EPYC 9R14 96-Core Processor", frozenset({"fpu", "avx2", "avx512_bf16"}),
                              25, 17)


def test_physical_cores_count_a_cores_hyperthreads_once(monkeypatch):
    # Four logical CPUs, two per core: two cores.
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    monkeypatch.setattr(cpu, "cpu_limit", lambda: None)  # whatever the machine running the test is held to
    siblings = {0: "0,2", 2: "0,2", 1: "1,3", 3: "1,3"}
    real_open = open

    def fake_open(path, *a, **k):
        if str(path).startswith("/sys/devices/system/cpu/"):
            import io

            return io.StringIO(siblings[int(str(path).split("/cpu")[2].split("/")[0])] + "\n")
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", fake_open)
    assert cpu.physical_cores() == 2
    assert cpu.cores() == [frozenset({0, 2}), frozenset({1, 3})]  # what `sweep.py --pin` hands out


def limits(tmp_path, mounts: list[str], cgroup: str, files: dict[str, str]) -> float | None:
    """cpu_limit over a fake /proc/self/mountinfo (mount points under tmp_path) and /proc/self/cgroup."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "mountinfo").write_text("".join(m.format(t=tmp_path) + "\n" for m in mounts))
    (tmp_path / "cgroup").write_text(cgroup)
    return cpu.cpu_limit(str(tmp_path / "mountinfo"), str(tmp_path / "cgroup"))


V2 = "30 23 0:26 {root} {t}/cg rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"
V1 = "36 35 0:30 {root} {t}/cpu rw,nosuid shared:12 - cgroup cgroup rw,cpu,cpuacct"
OTHER = "37 35 0:31 / {t}/memory rw,nosuid shared:13 - cgroup cgroup rw,memory"


@pytest.mark.parametrize("mounts, cgroup, files, want", [
    # a container's own cgroup, seen as the top of the hierarchy (docker --cpus 1.5)
    ([V2.replace("{root}", "/")], "0::/\n", {"cg/cpu.max": "150000 100000\n"}, 1.5),
    # the tightest limit of the cgroups above counts, and "max" is none
    ([V2.replace("{root}", "/")], "0::/a/b\n", {"cg/cpu.max": "max 100000\n", "cg/a/cpu.max": "50000 100000\n",
                                                "cg/a/b/cpu.max": "max 100000\n"}, 0.5),
    # cgroup v1, the host's path for a container whose mount shows its cgroup from its own root
    ([OTHER, V1.replace("{root}", "/docker/x")], "5:memory:/docker/x\n4:cpu,cpuacct:/docker/x\n",
     {"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
    # v1 as a host sees it, nested
    ([V1.replace("{root}", "/")], "4:cpu,cpuacct:/sltest\n",
     {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n",
      "cpu/sltest/cpu.cfs_quota_us": "125000\n", "cpu/sltest/cpu.cfs_period_us": "100000\n"}, 1.25),
    # no limit set, no limit files, no cpu hierarchy mounted, a damaged file
    ([V2.replace("{root}", "/")], "0::/\n", {"cg/cpu.max": "max 100000\n"}, None),
    ([V2.replace("{root}", "/")], "0::/user.slice\n", {}, None),
    ([OTHER], "5:memory:/\n", {}, None),
    ([V1.replace("{root}", "/")], "4:cpu,cpuacct:/\n", {"cpu/cpu.cfs_quota_us": "lots\n"}, None),
])
def test_cpu_limit_is_the_tightest_cgroup_quota_above_this_process(tmp_path, mounts, cgroup, files, want):
    assert limits(tmp_path, mounts, cgroup, files) == want


def test_cpu_limit_of_this_machine_is_none_or_a_positive_number():
    limit = cpu.cpu_limit()
    assert limit is None or limit > 0
    assert cpu.cpu_limit(mountinfo="/nonexistent") is None


@pytest.mark.parametrize("cores, limit, want", [(2, None, 2), (2, 0.5, 1), (2, 1.0, 1), (2, 1.25, 1), (2, 1.5, 2),
                                                (64, 2.0, 2), (64, 2.6, 3), (4, 16.0, 4)])
def test_physical_cores_are_no_more_than_a_cgroup_limit_allows(monkeypatch, cores, limit, want):
    monkeypatch.setattr(cpu, "cores", lambda: [frozenset({c}) for c in range(cores)])
    monkeypatch.setattr(cpu, "cpu_limit", lambda: limit)
    assert cpu.physical_cores() == want
