import json
import pickle

import pytest
import torch

import storyloom
from storyloom.errors import UserError
from storyloom.runs import Run, write_atomic

from conftest import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory, sonnets):
    d = tmp_path_factory.mktemp("runs")
    (d / "a.txt").write_text(sonnets)
    return storyloom.train([str(d / "a.txt")], out=d / "run", steps=30, progress=False, **TINY)


def test_a_run_is_safetensors_and_json(run):
    names = sorted(p.name for p in run.iterdir())
    assert names == ["best.safetensors", "config.json", "last.safetensors", "metrics.jsonl", "trainer.json",
                     "trainer.safetensors", "vocab.json"]
    for p in run.iterdir():
        head = p.read_bytes()[:2]
        assert head != b"\x80\x04" and head != b"\x80\x02", f"{p.name} looks pickled"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["hidden"] == 32 and cfg["info"]["params"] > 0


def test_reloaded_run_gives_identical_logits(run):
    a = storyloom.load(run)
    b = storyloom.load(run)
    x = torch.from_numpy(a.tokenizer.encode("Shall I compare thee").astype("int64"))[None]
    with torch.no_grad():
        torch.testing.assert_close(a.model(x)[0], b.model(x)[0], rtol=0, atol=0)
    assert a.model.training is False


def test_weights_that_do_not_match_the_config_are_refused(run, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["hidden"] = 64
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="do not match config.json"):
        storyloom.load(bad)


def test_damaged_weights_are_refused(run, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    data = (bad / "best.safetensors").read_bytes()
    (bad / "best.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="damaged weights"):
        storyloom.load(bad)


def test_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(UserError, match="not a storyloom run"):
        Run.open(tmp_path)
    with pytest.raises(UserError, match="no such run"):
        Run.open(tmp_path / "nope")


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "f.json"
    write_atomic(p, b"old")

    def boom(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", boom)
    with pytest.raises(OSError):
        write_atomic(p, b"new")
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.json"]


def test_pickle_is_never_loaded(run, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (bad / "best.safetensors").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UserError):
        storyloom.load(bad)
    assert not marker.exists()
