import errno
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import storyloom
from storyloom.errors import UserError
from storyloom.runs import Run, write_atomic

from conftest import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory, sonnets):
    d = tmp_path_factory.mktemp("runs")
    (d / "a.txt").write_text(sonnets)
    return storyloom.train([str(d / "a.txt")], out=d / "run", steps=30, progress=False, **TINY)


@pytest.fixture
def copy(run, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    return bad


def test_a_run_is_safetensors_and_json(run):
    names = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    checkpoint = ["manifest.json", "model.safetensors", "trainer.json", "trainer.safetensors"]
    assert names == ["best.safetensors", *(f"checkpoints/step-{s:08d}/{f}" for s in (15, 30) for f in checkpoint),
                     "config.json", "manifest.json", "metrics.jsonl", "vocab.json"]  # --keep 2 by default
    for p in run.rglob("*.*"):
        if p.is_file():
            head = p.read_bytes()[:2]
            assert head not in (b"\x80\x04", b"\x80\x02"), f"{p.name} looks pickled"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["hidden"] == 32 and cfg["info"]["params"] > 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest.pop("format") == 1 and cfg["format"] == 1
    assert set(manifest) == {"best.safetensors", "config.json", "vocab.json", "metrics.jsonl"}
    assert all(len(e["sha256"]) == 64 and e["bytes"] > 0 for e in manifest.values())


def test_reloaded_run_gives_identical_logits(run):
    a = storyloom.load(run, device="cpu")
    b = storyloom.load(run, which="last", device="cpu")
    x = torch.from_numpy(a.tokenizer.ids("Shall I compare thee").astype("int64"))[None]
    with torch.no_grad():
        torch.testing.assert_close(a.model(x)[0], storyloom.load(run, device="cpu").model(x)[0], rtol=0, atol=0)
    assert a.model.training is False
    # The run ended on its best evaluation, which scores the weights' moving average: the best weights are the last
    # checkpoint's average, and `--which last` its weights as trained.
    ck = Run.open(run).latest().state()
    average = {k.removeprefix("module."): v for k, v in ck.average.items() if k.startswith("module.")}
    for got, want in ((a, average), (b, ck.model)):
        assert all(torch.equal(got.model.state_dict()[k], v) for k, v in want.items()) and set(want) == set(got.model.state_dict())
    assert not torch.equal(a.model.state_dict()["head.weight"], b.model.state_dict()["head.weight"])


@pytest.mark.parametrize("trained_on", ["dev", "cpu"])
def test_a_run_loads_on_the_other_device(tmp_path, sonnets, dev, trained_on):
    """A run trained on the GPU scores and writes on the CPU, and the reverse, to fp32 rounding."""
    where = dev if trained_on == "dev" else "cpu"
    (tmp_path / "a.txt").write_text(sonnets)
    run = storyloom.train([str(tmp_path / "a.txt")], out=tmp_path / "run", steps=30, progress=False, device=where, **TINY)
    # fp32 steps on both: `auto` writes in int8 on a CPU, in fp32 on a GPU
    here, there = (storyloom.load(run, device=d, decode_precision="fp32") for d in ("cpu", dev))
    assert next(there.model.parameters()).device.type == dev
    text = sonnets[-2000:]
    assert here.score(text)["bpc"] == pytest.approx(there.score(text)["bpc"], abs=1e-4)
    torch.testing.assert_close(here.decoder.read(here.tokenizer.ids(text))[0], there.decoder.read(there.tokenizer.ids(text))[0],
                               rtol=1e-4, atol=1e-4)
    assert len(there.generate("Shall I", 50, seed=1)) == 50
    assert there.generate("Shall I", 50, seed=1) == there.generate("Shall I", 50, seed=1)


@pytest.mark.parametrize("name", ["config.json", "vocab.json", "manifest.json", "trainer.json"])
def test_fault_a_run_from_a_newer_storyloom_is_refused(copy, name):
    from storyloom.files import entry

    path = copy / name if name != "trainer.json" else Run(copy).latest().path / name
    d = json.loads(path.read_text())
    d["format"] = 99
    path.write_text(json.dumps(d))
    for manifest in (copy / "manifest.json", path.parent / "manifest.json"):  # as a newer storyloom would have listed it
        m = json.loads(manifest.read_text())
        if name in m:
            m[name] = entry(path.read_bytes())
            manifest.write_text(json.dumps(m))
    with pytest.raises(UserError, match=rf"{name}: written by a newer storyloom \(file format 99; this one reads formats "
                                        r"up to 1\); upgrade storyloom to open it"):
        storyloom.status(copy) if name == "trainer.json" else storyloom.load(copy)


def test_fault_hand_edited_config_is_refused(copy):
    cfg = json.loads((copy / "config.json").read_text())
    cfg["model"]["hidden"] = 64
    (copy / "config.json").write_text(json.dumps(cfg, indent=1))
    with pytest.raises(UserError, match=r"config.json: .*(SHA-256 differs|truncated)"):
        storyloom.load(copy)


def test_fault_weights_that_do_not_match_the_config_are_refused(copy):
    # Rewritten through the run, so the manifest agrees: the shapes still must not.
    r = Run(copy)
    cfg = json.loads(r.read("config.json"))
    cfg["model"]["hidden"] = 64
    r.put("config.json", json.dumps(cfg).encode())
    with pytest.raises(UserError, match="do not match config.json"):
        storyloom.load(copy)


def test_fault_mismatched_vocabulary_is_refused(copy):
    r = Run(copy)
    vocab = json.loads(r.read("vocab.json"))
    vocab["chars"] = vocab["chars"][:-1]
    r.put("vocab.json", json.dumps(vocab).encode())
    with pytest.raises(UserError, match="vocab.json has"):
        storyloom.load(copy)


def test_fault_truncated_weights_are_refused(copy):
    data = (copy / "best.safetensors").read_bytes()
    (copy / "best.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"best.safetensors: truncated"):
        storyloom.load(copy)


def test_fault_flipped_byte_is_refused(copy):
    data = bytearray((copy / "best.safetensors").read_bytes())
    data[-7] ^= 0x01  # inside a weight: safetensors itself would load it
    (copy / "best.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"best.safetensors: its SHA-256 differs"):
        storyloom.load(copy)


def test_fault_flipped_byte_in_a_checkpoint_is_refused(copy):
    ck = next((copy / "checkpoints").iterdir())
    data = bytearray((ck / "trainer.safetensors").read_bytes())
    data[-3] ^= 0x10
    (ck / "trainer.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"trainer.safetensors: its SHA-256 differs"):
        storyloom.train(resume=copy, progress=False, steps=40)


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_fault_planted_pickle_is_never_loaded(copy, tmp_path):
    marker = tmp_path / "pwned"
    (copy / "best.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UserError, match="never unpickles"):
        storyloom.load(copy)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["model.pt", "model.pth", "weights.pkl", "checkpoint"])
def test_fault_pickle_given_as_a_run_is_refused(tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    if name.endswith(".pt"):
        torch.save({"w": torch.zeros(2)}, path)  # torch's zip format, a pickle inside
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UserError, match="never unpickles"):
        storyloom.load(path)
    assert not marker.exists()


def test_a_directory_of_pickles_is_not_a_run(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="pytorch_model.bin: pickles, which storyloom never loads"):
        Run.open(tmp_path)


def test_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(UserError, match="not a storyloom run"):
        Run.open(tmp_path)
    with pytest.raises(UserError, match="no such run"):
        Run.open(tmp_path / "nope")


def test_fault_missing_manifest_is_refused(copy):
    (copy / "manifest.json").unlink()
    with pytest.raises(UserError, match="no manifest.json"):
        storyloom.load(copy)


def test_fault_crash_between_manifest_and_file_still_verifies(copy, monkeypatch):
    """A kill after the manifest accepts the new hash but before the file lands."""
    r = Run(copy)
    import storyloom.runs as runs

    real = runs.write_atomic

    def die_on_weights(path, data):
        if path.name == "best.safetensors":
            raise KeyboardInterrupt  # stands in for SIGKILL mid-save
        real(path, data)

    monkeypatch.setattr(runs, "write_atomic", die_on_weights)
    with pytest.raises(KeyboardInterrupt):
        r.put("best.safetensors", b"{}")
    monkeypatch.setattr(runs, "write_atomic", real)
    storyloom.load(copy)  # the old weights, still accepted


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


def test_fault_full_disk_during_checkpoint_keeps_the_previous(copy, monkeypatch):
    import storyloom.runs as runs

    before = [c.step for c in Run(copy).checkpoints()]
    real = runs.write_synced
    calls = []

    def fill_up(path, data):
        calls.append(path.name)
        if path.name == "trainer.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(runs, "write_synced", fill_up)
    with pytest.raises(UserError, match=r"step-00000040: could not save the checkpoint \(No space left on device\); the checkpoint at step 30 is intact"):
        storyloom.train(resume=copy, progress=False, steps=40)
    monkeypatch.setattr(runs, "write_synced", real)
    assert "trainer.safetensors" in calls
    assert [c.step for c in Run(copy).checkpoints()] == before
    assert not [p for p in (copy / "checkpoints").iterdir() if p.name.startswith(".")]  # no half-written directory
    storyloom.load(copy, which="last")
    storyloom.train(resume=copy, progress=False, steps=40)  # and it resumes from there
    assert storyloom.api.status(copy)["step"] == 40


def test_keep_rotates_checkpoints(tmp_path, sonnets):
    (tmp_path / "a.txt").write_text(sonnets)
    run = storyloom.train([str(tmp_path / "a.txt")], out=tmp_path / "r", steps=20, checkpoint_every=4, keep=3,
                          progress=False, **TINY)
    assert [c.step for c in Run(run).checkpoints()] == [12, 16, 20]


def test_fault_out_holding_another_run_needs_overwrite(run, tmp_path, sonnets):
    (tmp_path / "a.txt").write_text(sonnets)
    dest = tmp_path / "dest"
    shutil.copytree(run, dest)
    before = (dest / "manifest.json").read_bytes()
    with pytest.raises(UserError, match="already holds a run.*--overwrite"):
        storyloom.train([str(tmp_path / "a.txt")], out=dest, steps=5, progress=False, **TINY)
    assert (dest / "manifest.json").read_bytes() == before
    storyloom.train([str(tmp_path / "a.txt")], out=dest, steps=5, overwrite=True, progress=False, **TINY)
    assert storyloom.api.status(dest)["step"] == 5
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds other files"):
        storyloom.train([str(tmp_path / "a.txt")], out=other, steps=5, overwrite=True, progress=False, **TINY)
    assert (other / "notes.txt").read_text() == "mine"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["config.json", "vocab.json", "best.safetensors", "manifest.json"]), junk=st.binary(max_size=300),
       cut=st.integers(min_value=0, max_value=400))
def test_fuzz_random_bytes_in_a_run_file_give_a_clear_error(run, tmp_path_factory, name, junk, cut):
    bad = tmp_path_factory.mktemp("fuzz") / "r"
    shutil.copytree(run, bad)
    data = (bad / name).read_bytes()
    new = data[:cut] + junk
    (bad / name).write_bytes(new)
    try:
        storyloom.load(bad)
    except UserError as e:
        assert "\n" not in str(e)
    else:
        assert new == data or name == "manifest.json" and json.loads(new) == json.loads(data)


FORMAT0 = Path(__file__).parent / "fixtures" / "format0"  # made by storyloom before files carried "format"
BPC0 = 6.016767149368523  # its score of the two lines below, by the release that made it


def test_a_run_written_before_format_versions_still_loads_and_resumes(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FORMAT0 / "run", run)
    m = storyloom.load(run, device="cpu")
    r = m.score("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:", unknown="replace")
    assert r["chars"] == 79 and r["bpc"] == pytest.approx(BPC0, abs=1e-5)  # what the release that wrote it scored
    assert m.generate("Shall", 20, seed=1) == "lHRj!nPkaTeXhLUUbVvf"
    assert storyloom.status(run)["step"] == 8
    storyloom.train([str(FORMAT0 / "sonnets.txt")], resume=run, steps=10, progress=False)
    assert storyloom.status(run)["step"] == 10


def test_a_corpus_prepared_before_format_versions_still_trains(tmp_path):
    from storyloom.prepared import load_prepared

    corpus, data = load_prepared(FORMAT0 / "prepared")
    assert (len(corpus.train), len(corpus.val)) == (5700, 300) and data.unknown == "replace"
    assert corpus.train[:10].tolist() == [25, 16, 14, 1, 24, 21, 20, 20, 14, 25]
    run = storyloom.train([str(FORMAT0 / "prepared")], out=tmp_path / "r", steps=3, progress=False, **TINY)
    assert storyloom.status(run)["step"] == 3
