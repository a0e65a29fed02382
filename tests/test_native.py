"""native.py: the C++ writing loop writes what the Python loop writes, and steps aside where it does not cover the settings.

`make test` installs a C++ compiler where it can (the Makefile's `compiler`), so the loop is built and checked here;
a machine without one fails test_the_loop_builds, naming the fix, instead of skipping what it cannot check.
"""

import platform
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import storyloom
from storyloom import kernels, native
from storyloom.config import SampleConfig

from conftest import TINY

PROMPT = "Shall I compare thee to a summer's day?\n"


ARM_CXX = "aarch64-linux-gnu-g++"
X86 = platform.machine() in ("x86_64", "AMD64")


@pytest.fixture(scope="module", autouse=True)
def arm_check(tmp_path_factory):
    """test_write_cpp_compiles_for_arm's compiler, started with the module: it runs for 10-20 s on one core beside
    the tests here (which use one), and the test, the module's last, waits for it. None where it cannot run."""
    if not X86 or not shutil.which(ARM_CXX):
        yield None
        return
    include = Path(torch.__file__).parent / "include"
    log = tmp_path_factory.mktemp("arm") / "g++.log"
    with open(log, "w") as f:
        p = subprocess.Popen([ARM_CXX, "-std=c++20", "-fsyntax-only", *native.FLAGS, f"-I{include}",
                              f"-I{include / 'torch/csrc/api/include'}", str(native.SOURCE)], stdout=f, stderr=f)
    yield p, log
    if p.poll() is None:
        p.kill()
    p.wait()


@pytest.fixture(scope="module")
def w(tmp_path_factory, sonnets):
    d = tmp_path_factory.mktemp("native")
    (d / "s.txt").write_text(sonnets)
    run = storyloom.train([str(d / "s.txt")], out=d / "run", steps=40, progress=False, device="cpu", **{**TINY, "lr": 1e-2})
    return storyloom.load(run, device="cpu", decode_precision="int8")


def test_the_loop_builds():
    assert native.build(), "the native writing loop did not build: install a C++ compiler (apt-get install g++)"


def written(w, use_native: bool, **kw) -> str:
    w.decoder.native = use_native
    try:
        return w.generate(PROMPT, **kw)
    finally:
        w.decoder.native = True


@pytest.mark.parametrize("temperature", [0.0, 0.8, 1.0, 1.7])
@pytest.mark.parametrize("length", [1, native.CHUNK, native.CHUNK + 2, 3 * native.CHUNK + 5])  # across the chunks' edges
def test_the_native_loop_writes_what_the_python_loop_writes(w, temperature, length):
    assert native.loop(w.model, "int8", w.device, SampleConfig(temperature=temperature), (), 1) is not None
    kw = dict(length=length, temperature=temperature, seed=11)
    assert written(w, True, **kw) == written(w, False, **kw)


@pytest.mark.parametrize("seed", range(4))
def test_banned_characters_and_stop_strings_as_in_python(w, seed):
    kw = dict(length=150, temperature=1.2, seed=seed, ban="e ", stop="\n\n")
    text = written(w, True, **kw)
    assert text == written(w, False, **kw) and "e" not in text and " " not in text and "\n\n" not in text


def test_a_session_and_an_unbounded_stream_go_through_it_unchanged(w):
    s = w.session(PROMPT)
    w.decoder.native = False
    slow = s.propose(100, seed=5)
    w.decoder.native = True
    assert s.propose(100, seed=5) == slow
    pieces = w.stream(PROMPT, 0, seed=2, temperature=0.9)  # length 0: until the caller stops
    text = "".join(next(pieces) for _ in range(3 * native.CHUNK))
    assert text == written(w, False, length=3 * native.CHUNK, seed=2, temperature=0.9)


@pytest.mark.parametrize("settings", [
    dict(top_k=5), dict(top_k=1), dict(top_p=0.9), dict(top_p=0.3, temperature=1.5), dict(repetition_penalty=1.3),
    dict(repetition_penalty=2.0, penalty_window=3, temperature=0.0), dict(top_k=20, top_p=0.8, repetition_penalty=1.2),
])
def test_every_sampling_filter_as_in_python(w, settings):
    kw = dict(length=2 * native.CHUNK + 7, seed=4, **settings)
    assert written(w, True, **kw) == written(w, False, **kw)


@pytest.mark.parametrize("streams, decode", [(2, "int8"), (1, "fp32"), (1, "bf16")])
def test_what_it_does_not_cover_stays_in_python(w, streams, decode):
    assert native.loop(w.model, decode, w.device, SampleConfig(), (), streams) is None
    assert native.loop(w.model, "int8", w.device, SampleConfig(top_k=3), (), 1) is not None


# Hidden 32 (TINY) takes write.cpp's own cell where ATen's kernels are AVX2 (own_cell); 30 is not whole 16-lane
# blocks of gates, so ATen's calls step it.
@pytest.mark.parametrize("kw", [dict(layers=2), dict(layers=3, input="onehot"), dict(tie=True, embed=8),
                                dict(level="word", vocab_size=300, tie=True, embed=8), dict(hidden=30)])
def test_deeper_tied_and_word_level_lstms_write_as_in_python(tmp_path, sonnets, kw):
    (tmp_path / "s.txt").write_text(sonnets)
    run = storyloom.train([str(tmp_path / "s.txt")], out=tmp_path / "run", steps=20, progress=False, device="cpu",
                          **{**TINY, **kw})
    m = storyloom.load(run, device="cpu", decode_precision="int8")
    assert native.loop(m.model, "int8", m.device, SampleConfig(), (), 1) is not None
    for settings in (dict(temperature=1.0), dict(temperature=0.0), dict(temperature=0.9, top_p=0.8, repetition_penalty=1.3)):
        kw = dict(length=native.CHUNK + 9, seed=6, **settings)
        assert written(m, True, **kw) == written(m, False, **kw)
    s = m.session(PROMPT)
    m.decoder.native = False
    slow = s.propose(40, seed=1)
    m.decoder.native = True
    assert s.propose(40, seed=1) == slow


needs_q8 = pytest.mark.skipif(not (native.build() and native.level()), reason="q8_linear needs AVX2 (x86)")


def edge_rows(K: int) -> list:
    """Rows that reach the corners of FBGEMM's quantisation: ties at +-1 (tanh's range), a range under its smallest
    scale, one sign only, all zeros (the first step's state), large values."""
    g = torch.Generator().manual_seed(K)
    rows = [torch.randn(1, K, generator=g) * s + o for s, o in ((1, 0), (5, 0.3), (0.2, -0.1))]
    rows += [torch.tanh(torch.randn(1, K, generator=g) * 3), torch.randn(1, K, generator=g) * 1e-5,
             torch.rand(1, K, generator=g), -torch.rand(1, K, generator=g) * 7, torch.zeros(1, K),
             torch.randn(1, K, generator=g) * 1e4]
    ties = torch.tanh(torch.randn(1, K, generator=g) * 3)
    ties[0, :2] = torch.tensor([-1.0, 1.0])[: K]
    return rows + [ties]


@needs_q8
@pytest.mark.parametrize("N, K", [(3072, 768), (64, 4), (100, 37), (84, 3), (1, 1), (200, 130)])
@pytest.mark.parametrize("bias", [False, True])
def test_q8_linear_is_fbgemms_product_bit_for_bit(N, K, bias):
    from storyloom.cells import int8_packed

    g = torch.Generator().manual_seed(N * K)
    W = torch.randn(N, K, generator=g) * 0.05
    packed = int8_packed(W, torch.randn(N, generator=g) if bias else None)
    m = torch.ops.storyloom.q8_pack(packed)
    for level in range(native.level(), 0, -1):  # AVX-512 VNNI where the CPU has it, and AVX2
        for x in edge_rows(K):
            assert torch.equal(torch.ops.storyloom.q8_linear(x, m, level), torch.ops.quantized.linear_dynamic(x, packed, True))


@needs_q8
# hidden 32: where ATen's kernels are its AVX2 ones, the gates are write.cpp's own (own_gates); 24 is no multiple of
# 16, so ATen's calls compute them. A scalar input is no lookup: its input products are the prompt's own.
@pytest.mark.parametrize("kw", [dict(), dict(layers=2), dict(layers=3, input="onehot"), dict(hidden=24),
                                dict(layers=2, input="scalar")])
def test_the_native_read_reads_what_model_read_reads_whole_or_cut(tmp_path, sonnets, kw):
    (tmp_path / "s.txt").write_text(sonnets)
    run = storyloom.train([str(tmp_path / "s.txt")], out=tmp_path / "run", steps=20, progress=False, device="cpu",
                          **{**TINY, **kw})
    model = storyloom.load(run, device="cpu", decode_precision="int8").model
    x = torch.randint(0, model.cfg.vocab_size, (1, 300), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        for cuts in ((300,), (1, 120, 179)):
            s1 = s2 = None
            for piece in torch.split(x, list(cuts), 1):
                (l1, s1), (l2, s2) = model.read(piece, s1, "int8"), native.read(model, piece, s2)
                assert torch.equal(l1, l2) and all(torch.equal(a, b) for a, b in zip(s1, s2))
        assert native.read(model, x.expand(2, -1), None) is None  # several streams: model.read reads them


@needs_q8
def test_the_read_and_the_step_compute_their_own_gates_where_atens_kernels_are_avx2():
    # Where they are, the first character after a long prompt comes about 10% sooner; a check at first use against
    # ATen's numbers (write.cpp's same_as_aten, addcmul_form) must not have turned them off unseen.
    avx2 = torch.backends.cpu.get_cpu_capability() == "AVX2" and torch.backends.mkl.is_available()
    assert torch.ops.storyloom.own_gates(32) == avx2
    assert not torch.ops.storyloom.own_gates(24)  # ATen ends a gate not a multiple of 16 long with its scalar loop
    assert (torch.ops.storyloom.own_cell(32) > 0) == avx2 and torch.ops.storyloom.own_cell(30) == 0  # the writing step's


@needs_q8
def test_the_read_table_is_bounded_in_size_and_in_the_ids_it_takes(tmp_path, sonnets, monkeypatch):
    from storyloom import model as model_module

    (tmp_path / "s.txt").write_text(sonnets)
    run = storyloom.train([str(tmp_path / "s.txt")], out=tmp_path / "run", steps=5, progress=False, device="cpu", **TINY)
    model = storyloom.load(run, device="cpu", decode_precision="int8").model
    x = torch.randint(0, model.cfg.vocab_size, (1, 50), generator=torch.Generator().manual_seed(4))
    assert model.native_read_weights()[0] is not None
    table, W_ih, W_hh, _ = model.native_read_weights()
    h0, c0 = model.cell.initial_state(1)
    with pytest.raises(RuntimeError, match="a token id outside the table's"):  # never a read past its end
        torch.ops.storyloom.read_tokens(table, torch.tensor([0, model.cfg.vocab_size]), W_ih, native.q8(model, "_q8_read", W_hh),
                                        h0, c0)
    monkeypatch.setattr(model_module, "READ_TABLE_BYTES", 16 * model.cfg.hidden * model.cfg.vocab_size - 1)
    assert model.native_read_weights()[0] is None
    with torch.inference_mode():
        (l1, s1), (l2, s2) = model.read(x, None, "int8"), native.read(model, x, None)
    assert torch.equal(l1, l2) and all(torch.equal(a, b) for a, b in zip(s1, s2))


def test_the_loop_shares_torchs_openmp_runtime():
    """write.cpp splits q8_linear's rows with OpenMP: linked against a second libgomp, the process would hold two
    thread teams fighting over the cores (the serve engines' slowdown that "One OpenMP team" describes)."""
    from pathlib import Path

    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("no /proc/self/maps to read the loaded libraries from")
    assert native.build()
    runtimes = {line.split()[-1] for line in maps.read_text().splitlines() if "libgomp" in line or "libiomp" in line}
    assert len(runtimes) == 1, runtimes


def test_without_avx2_fbgemm_multiplies_and_the_text_is_the_same(w, monkeypatch):
    fast = written(w, True, length=native.CHUNK + 5, seed=8)
    monkeypatch.setattr(native, "level", lambda: 0)
    assert native.loop(w.model, "int8", w.device, SampleConfig(), (), 1).weights[4] == []
    with torch.inference_mode():
        assert native.read(w.model, torch.zeros(1, 5, dtype=torch.long), None) is None
    assert written(w, True, length=native.CHUNK + 5, seed=8) == fast == written(w, False, length=native.CHUNK + 5, seed=8)


@pytest.fixture
def qnnpack():
    """The quantized engine of ARM CPUs, which x86 wheels carry too: its products round otherwise than FBGEMM's."""
    if "qnnpack" not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch has no QNNPACK")
    was = torch.backends.quantized.engine
    torch.backends.quantized.engine = "qnnpack"
    yield
    torch.backends.quantized.engine = was


def test_under_arms_engine_the_loop_multiplies_with_it_and_writes_as_python_does(w, qnnpack):
    """On ARM (QNNPACK) q8_linear, which computes FBGEMM's numbers, must stand aside: the loop then calls the
    engine's own packed products, as the Python loop does."""
    assert native.level() == 0
    if torch.ops.storyloom.q8_level():  # why it must: on x86, where both run, their numbers differ
        from storyloom.cells import int8_packed

        packed, x = int8_packed(torch.randn(256, 96)), torch.randn(1, 96)
        q8 = torch.ops.storyloom.q8_linear(x, torch.ops.storyloom.q8_pack(packed), 1)
        assert not torch.equal(q8, torch.ops.quantized.linear_dynamic(x, packed, True))
    arm = storyloom.load(w.run.path, device="cpu", decode_precision="int8")  # packed under QNNPACK, as on ARM
    assert native.loop(arm.model, "int8", arm.device, SampleConfig(), (), 1).weights[4] == []
    kw = dict(length=3 * native.CHUNK + 5, seed=8, temperature=1.0)
    assert written(arm, True, **kw) == written(arm, False, **kw)


def test_a_model_it_cannot_step_stays_in_python(tmp_path, sonnets):
    (tmp_path / "s.txt").write_text(sonnets)
    for kw in (dict(cell="gru"), dict(input="scalar")):
        run = storyloom.train([str(tmp_path / "s.txt")], out=tmp_path / str(len(list(tmp_path.iterdir()))), steps=2,
                              progress=False, device="cpu", **{**TINY, **kw})
        m = storyloom.load(run, device="cpu")
        assert m.model.native_weights() is None, kw
        assert len(m.generate(PROMPT, 20, seed=1)) == 20


def test_fault_without_a_compiler_writing_stays_in_python_and_says_so_once(w, monkeypatch, capsys, tmp_path):
    from torch.utils import cpp_extension

    def no_compiler(*a, **k):
        raise RuntimeError("Error building extension 'storyloom_write': g++: not found")

    monkeypatch.setattr(native, "_built", None)  # not tried yet in this process; put back after the test
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.setattr(cpp_extension, "get_default_build_root", lambda: str(tmp_path))
    monkeypatch.setattr(kernels, "cache_root", lambda: tmp_path)  # no build cached there
    assert native.build() is False and native.build() is False
    err = capsys.readouterr().err
    assert err.count("writing in Python") == 1 and "g++: not found" in err and "install a C++ compiler" in err
    assert native.loop(w.model, "int8", w.device, SampleConfig(), (), 1) is None
    assert written(w, True, length=30, seed=1) == written(w, False, length=30, seed=1)


def test_fault_an_unwritable_build_folder_writes_in_python_and_names_the_folder(w, monkeypatch, capsys, tmp_path):
    from torch.utils import cpp_extension

    (tmp_path / "home").write_text("a file where the cache folder would be: not even root can build under it")
    monkeypatch.setattr(native, "_built", None)
    monkeypatch.setattr(kernels, "cache_root", lambda: tmp_path / "home" / "torch_extensions")  # nothing cached
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "home" / "torch_extensions"))
    monkeypatch.setattr(cpp_extension, "load", lambda *a, **k: pytest.fail("the builder ran without a folder"))
    assert native.build() is False
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "writing in Python" in err and "building" not in err
    assert f"cannot write the build folder {tmp_path / 'home' / 'torch_extensions'}" in err
    assert "set TORCH_EXTENSIONS_DIR (or XDG_CACHE_HOME) to a folder you can write" in err and "compiler" not in err
    assert written(w, True, length=30, seed=1) == written(w, False, length=30, seed=1)


def test_fault_a_build_killed_midway_leaves_a_lock_that_does_not_hang_the_next(monkeypatch, tmp_path):
    import os
    import time

    from torch.utils import cpp_extension

    seen = []
    monkeypatch.setattr(native, "_built", None)
    monkeypatch.setattr(cpp_extension, "get_default_build_root", lambda: str(tmp_path))
    monkeypatch.setattr(kernels, "cache_root", lambda: tmp_path)
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setattr(cpp_extension, "load", lambda name, *a, build_directory, **k: seen.append(
        sorted(p.name for p in (tmp_path / name).iterdir())))
    native.build()  # finds where the build goes
    where = next(tmp_path.iterdir())
    lock = where / "lock"
    lock.touch()  # a build SIGKILLed mid-way leaves torch's lock; torch would wait on it for ever
    old = time.time() - kernels.STALE_LOCK - 5
    os.utime(lock, (old, old))
    monkeypatch.setattr(native, "_built", None)
    assert native.build() and seen[-1] == []  # the stale lock was gone when the builder ran
    lock.touch()  # a fresh one is a build running now: left for torch to wait on
    monkeypatch.setattr(native, "_built", None)
    assert native.build() and seen[-1] == ["lock"]


def test_a_cached_build_loads_without_the_builder(monkeypatch):
    from torch.utils import cpp_extension

    assert native.build()  # built (or found) under cache_root() by now
    monkeypatch.setattr(native, "_built", None)
    monkeypatch.setattr(cpp_extension, "load", lambda *a, **k: pytest.fail("the builder ran for a cached build"))
    assert native.build()


def test_fault_a_build_killed_while_linking_is_built_again(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    built = []
    monkeypatch.setattr(native, "_built", None)
    monkeypatch.setattr(kernels, "cache_root", lambda: tmp_path)
    monkeypatch.setattr(cpp_extension, "get_default_build_root", lambda: str(tmp_path))
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setattr(cpp_extension, "load", lambda name, *a, **k: built.append(name))
    assert native.build() and len(built) == 1  # nothing cached: the builder runs
    (tmp_path / built[0] / f"{built[0]}.so").write_bytes(b"\x7fELF cut short")  # what a killed link leaves
    monkeypatch.setattr(native, "_built", None)
    assert native.build() and len(built) == 2  # not loadable: built again, not an error


def test_write_cpp_compiles_for_arm(arm_check):
    """Its x86 kernels sit behind a preprocessor guard, so ARM machines (Apple Silicon under Linux, Graviton, a
    Raspberry Pi) build the rest of the loop. CI has no ARM machine: on x86 a cross compiler checks the source
    against torch's headers (`make test` installs it); on ARM, test_the_loop_builds builds it for real."""
    if not X86:
        pytest.skip("not x86: test_the_loop_builds compiles write.cpp on this machine itself")
    assert arm_check, "no ARM cross compiler to check write.cpp with: apt-get install g++-aarch64-linux-gnu"
    p, log = arm_check
    assert p.wait(timeout=600) == 0, log.read_text()[-3000:]
