"""Data-parallel training (world.py): a world of 2 CPU processes on gloo, launched by torchrun or by hand."""

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import storyloom
from storyloom.errors import UserError
from storyloom.runs import Run
from storyloom.world import SOLO, World

from conftest import free_port

TINY = ["--hidden", "32", "--layers", "1", "--embed", "16", "--seq-len", "16", "--batch-size", "8", "--evals", "3",
        "--threads", "1", "--precision", "fp32", "--dropout", "0", "--reset-prob", "0.2", "--lr", "1e-2",
        "--log-every", "1", "--deterministic", "--no-progress", "--seed", "5"]


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1", **extra}


def _torchrun(n: int, *args, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                             "-m", "storyloom", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), **popen)


def _one(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "storyloom", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())


def _ranks(n: int, argv: list[str], module: bool = True) -> list[subprocess.Popen]:
    """n processes with torchrun's environment set by hand, so a test can kill or stop one of them alone."""
    port = free_port()
    cmd = [sys.executable, "-m", "storyloom", *argv] if module else [sys.executable, "-c", *argv]
    return [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=_env(RANK=str(r), WORLD_SIZE=str(n), LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(n),
                                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))) for r in range(n)]


def _ok(p: subprocess.Popen, timeout: float = 180) -> None:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-3000:]


def _rows(run):
    return [(r["step"], r.get("train_loss"), r.get("val_bpc")) for r in storyloom.metrics(run)]


def _close(a, b, tol):
    assert [r[0] for r in a] == [r[0] for r in b]
    for x, y in zip(a, b):
        for u, v in zip(x[1:], y[1:]):
            assert (u is None) == (v is None) and (u is None or abs(u - v) <= tol), (x, y)


@pytest.fixture
def text(tmp_path, sonnets):
    (tmp_path / "s.txt").write_text(sonnets)
    return tmp_path / "s.txt"


def test_a_world_of_2_trains_as_one_process_does(tmp_path, text):
    """Same global batch: the same losses step by step, the same evaluations (split over the ranks), the same weights."""
    flags = ["--steps", "40", *TINY]
    two, one = _torchrun(2, "train", text, "--out", tmp_path / "two", *flags), _one("train", text, "--out", tmp_path / "one", *flags)
    _ok(two), _ok(one)
    a, b = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert len([r for r in a if r[2] is not None]) == 3 and a[-1][0] == 40
    _close(a, b, 1e-4)
    assert a[-1][1] < a[0][1] - 0.3  # it learned something, so equal curves mean something
    wa, wb = Run.open(tmp_path / "one").latest().weights(), Run.open(tmp_path / "two").latest().weights()
    assert wa.keys() == wb.keys() and max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= 1e-4
    assert Run.open(tmp_path / "two").info()["ranks"] == 2
    # Only rank 0 wrote and reported; the run loads, scores and writes in one CPU process.
    assert _rows(tmp_path / "two")[0][0] == 1
    m = storyloom.load(tmp_path / "two", device="cpu")
    assert len(m.generate("Shall I", length=20, seed=1)) == 20
    assert abs(m.score(text.read_text()[:2000])["bpc"] - storyloom.load(tmp_path / "one").score(text.read_text()[:2000])["bpc"]) < 1e-3


def _stat(pid: int | str) -> list[str] | None:
    """/proc/PID/stat's fields after the command's name (state, parent, ...); None for a process gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    """The processes pid started (Linux's /proc): torchrun puts each rank in a process group of its own."""
    return [int(d.name) for d in Path("/proc").iterdir()
            if d.name.isdigit() and (f := _stat(d.name)) is not None and int(f[1]) == pid]


def _gone(pid: int) -> bool:
    f = _stat(pid)
    return f is None or f[0] in ("Z", "X")


def _kill_world_at_random_step(tmp_path, text, flags) -> int:
    target = random.randrange(8, 50)
    part = _torchrun(2, "train", text, "--out", tmp_path / "part", *flags, start_new_session=True)
    metrics, deadline = tmp_path / "part" / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and part.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= target:
            break
        time.sleep(0.005)
    # torchrun and every rank at once, as a lost machine would. Killing torchrun's group alone left the ranks
    # (each in a group of its own) writing for a moment after it, so each is killed, and awaited, by name.
    ranks = _children(part.pid)
    for pid in ranks:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os.killpg(part.pid, signal.SIGKILL)
    part.wait(timeout=30)
    while time.time() < deadline + 30 and not all(_gone(pid) for pid in ranks):
        time.sleep(0.01)
    assert len(ranks) == 2 and all(_gone(pid) for pid in ranks), ranks
    return storyloom.status(tmp_path / "part")["step"]


KILL_FLAGS = ["--steps", "60", "--checkpoint-every", "5", *TINY]


@pytest.fixture(scope="module")
def killed_world(tmp_path_factory, sonnets) -> tuple[Path, int]:
    """A world of 2 SIGKILLed at a random step, made once (each launch of a world costs seconds of imports): each
    test resumes its own copy of the run."""
    d = tmp_path_factory.mktemp("killed")
    (d / "s.txt").write_text(sonnets)
    killed_at = _kill_world_at_random_step(d, d / "s.txt", KILL_FLAGS)
    assert killed_at < 60
    return d / "part", killed_at


def test_fault_sigkill_the_world_then_resume_equals_the_uninterrupted_world(tmp_path, killed_world):
    part, killed_at = killed_world
    full = _torchrun(2, "train", part.parent / "s.txt", "--out", tmp_path / "full", *KILL_FLAGS)
    shutil.copytree(part, tmp_path / "part")
    _ok(full)
    resumed = _torchrun(2, "train", "--resume", tmp_path / "part", "--no-progress")
    _ok(resumed)
    assert _rows(tmp_path / "part") == _rows(tmp_path / "full"), f"checkpoint at step {killed_at}"


def test_resume_on_another_world_size_reshards_the_streams(tmp_path, killed_world):
    """A world-2 checkpoint resumed by one process: the same training as one process all along (dropout off)."""
    part, _ = killed_world
    one = _one("train", part.parent / "s.txt", "--out", tmp_path / "one", *KILL_FLAGS)
    shutil.copytree(part, tmp_path / "part")
    _ok(one)
    resumed = _one("train", "--resume", tmp_path / "part", "--no-progress")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert "checkpointed by 2 rank(s) and resumes on 1" in err
    _close(_rows(tmp_path / "one"), _rows(tmp_path / "part"), 1e-4)


def test_fault_one_rank_dies_the_other_exits_with_one_line(tmp_path, text):
    ranks = _ranks(2, ["train", str(text), "--out", str(tmp_path / "r"), "--steps", "100000", "--checkpoint-every", "50", *TINY])
    metrics, deadline = tmp_path / "r" / "metrics.jsonl", time.time() + 60
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        time.sleep(0.01)
    ranks[1].kill()
    t = time.time()
    out, err = ranks[0].communicate(timeout=60)
    assert time.time() - t < 30 and ranks[0].returncode == 1, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("storyloom:")]
    assert len(lines) == 1 and lines[0].startswith("storyloom: error: rank 0 of 2 lost the others") and "Traceback" not in err
    ranks[1].wait()


def test_fault_a_hung_rank_times_out_the_others(tmp_path, text):
    ranks = _ranks(2, ["train", str(text), "--out", str(tmp_path / "r"), "--steps", "100000", "--dist-timeout", "3", *TINY])
    metrics, deadline = tmp_path / "r" / "metrics.jsonl", time.time() + 60
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        time.sleep(0.01)
    ranks[1].send_signal(signal.SIGSTOP)
    try:
        t = time.time()
        out, err = ranks[0].communicate(timeout=60)
        assert time.time() - t < 30 and ranks[0].returncode == 1, err[-2000:]
        assert "storyloom: error: rank 0 of 2 lost the others" in err and "Traceback" not in err, err
    finally:
        ranks[1].kill()
        ranks[1].wait()


def test_bad_input_on_every_rank_is_one_line_and_exit_2(tmp_path):
    ranks = _ranks(2, ["train", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "r"), *TINY])
    for p in ranks:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 2 and err.strip().startswith("storyloom: error:") and len(err.strip().splitlines()) == 1, err


TOGETHER = """
import os, sys
import torch
from storyloom.errors import UserError
from storyloom.world import World
w = World.join(torch.device("cpu"), 30)
def read():
    if w.rank == 1:
        raise UserError("s.txt: permission denied; make it readable")
    return "text"
try:
    w.together(read, "reading the text")
except UserError as e:
    print(e)
    w.abandon()
    sys.exit(2)
"""


def test_bad_input_found_by_one_rank_stops_every_rank_with_the_same_line():
    ranks = _ranks(2, [TOGETHER], module=False)
    outs = []
    for p in ranks:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 2, err
        outs.append(out.strip())
    assert outs == ["rank 1: s.txt: permission denied; make it readable"] * 2


def test_streams_split_evenly_or_the_flag_is_named():
    assert World(rank=1, size=4).shard(32) == slice(8, 16) and SOLO.shard(5) == slice(0, 5)
    with pytest.raises(UserError, match="--batch-size 30 does not split evenly over 4 ranks"):
        World(rank=0, size=4).shard(30)


def test_solo_runs_no_collective():
    assert not SOLO.joined and SOLO.main and SOLO.threads(8) == 0
    t = torch.tensor([1.0, 2.0])
    assert SOLO.sum(t) is t and SOLO.clock(3.5, True) == (3.5, True) and SOLO.gather(t)[0] is t
    assert SOLO.together(lambda: 7, "x") == 7 and SOLO.broadcast("p") == "p"
    assert World(rank=0, size=2, local_size=2, backend="gloo").threads(8) == 4


def test_train_help_shows_the_torchrun_launch(capsys):
    from storyloom.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "torchrun --nproc-per-node N -m storyloom train" in " ".join(capsys.readouterr().out.split())


def test_a_torchrun_world_of_1_on_the_device_trains_as_one_process(tmp_path, text, dev):
    """The process group and DDP themselves (nccl on a GPU, gloo on the CPU) change nothing: a world of 1 equals a plain run."""
    flags = ["--steps", "20", *TINY, "--device", dev]
    world, plain = _torchrun(1, "train", text, "--out", tmp_path / "t", *flags), _one("train", text, "--out", tmp_path / "p", *flags)
    _ok(world), _ok(plain)
    assert Run.open(tmp_path / "t").info()["device"].startswith(dev)
    _close(_rows(tmp_path / "p"), _rows(tmp_path / "t"), 1e-5)
