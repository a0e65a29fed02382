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
