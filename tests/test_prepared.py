import pytest

from storyloom.config import DataConfig
from storyloom.corpus import build
from storyloom.errors import UserError
from storyloom.sources import read


def test_prepared_corpus_trains_from_a_memory_map(tmp_path, sonnets, capsys):
    import numpy as np

    import storyloom
    from storyloom.cli import main
    from storyloom.prepared import load_prepared

    from conftest import TINY

    (tmp_path / "s.txt").write_text(sonnets)
    assert main(["prepare", str(tmp_path / "s.txt"), "--out", str(tmp_path / "prep"), "--level", "word"]) == 0
    assert "train with: storyloom train" in capsys.readouterr().out
    c, data = load_prepared(tmp_path / "prep")
    assert isinstance(c.train, np.memmap) and c.train.dtype == np.uint16 and data.level == "word"
    direct = build(read([str(tmp_path / "s.txt")]), DataConfig(level="word"))
    assert np.array_equal(c.train, direct.train) and np.array_equal(c.val, direct.val) and c.val_chars == direct.val_chars
    run = storyloom.train([str(tmp_path / "prep")], out=tmp_path / "r", steps=5, preset="word", progress=False,
                          **{**TINY, "tie": False})
    assert storyloom.status(run)["step"] == 5
    assert storyloom.validation_text(run) == direct.tokenizer.decode(direct.val)
    with pytest.raises(storyloom.UserError, match="prepared at word level"):
        storyloom.train([str(tmp_path / "prep")], out=tmp_path / "r2", steps=5, progress=False, **TINY)
    with pytest.raises(storyloom.UserError, match="fixes its text settings; drop --lowercase"):
        storyloom.train([str(tmp_path / "prep")], out=tmp_path / "r3", preset="word", lowercase=True, progress=False, **TINY)


@pytest.mark.parametrize("split", [{"val_fraction": 0.2}, {"val_files": ("b.txt",)}])
@pytest.mark.parametrize("workers", [1, 2])
def test_char_prepare_streams_files_and_equals_the_in_memory_corpus(tmp_path, split, workers):
    import numpy as np

    import storyloom
    from storyloom.prepared import load_prepared

    texts = {"a.txt": "The Project Gutenberg EBook\n*** START OF THE PROJECT GUTENBERG EBOOK A ***\n" + "alpha beta é\r\n" * 30,
             "b.txt": "beta alpha é\n" * 40, "c.txt": "", "d.txt": "epsilon — zeta gamma delta\n" * 25}
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    files = [str(tmp_path / n) for n in texts]
    meta = storyloom.prepare(files, tmp_path / "prep", workers=workers, progress=False, **split)
    c, _ = load_prepared(tmp_path / "prep")
    direct = build(read(files), DataConfig(**split))
    assert np.array_equal(c.train, direct.train) and np.array_equal(c.val, direct.val)
    assert c.tokenizer.to_dict() == direct.tokenizer.to_dict()
    assert (c.val_chars, c.train_chars, c.train_names, c.val_names) == (
        direct.val_chars, direct.train_chars, direct.train_names, direct.val_names)
    assert meta["dtype"] == "uint8" and c.train.dtype == np.uint8


def test_char_prepare_errors_from_a_worker_are_one_line(tmp_path):
    import storyloom

    (tmp_path / "a.txt").write_text("aaaa bbbb " * 50)
    (tmp_path / "b.txt").write_text("abz")
    with pytest.raises(UserError, match="validation text.*'z'"):
        storyloom.prepare([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], tmp_path / "p", val_files=("b.txt",),
                          workers=2, progress=False)
    assert not (tmp_path / "p" / "prepared.json").exists()


def test_prepare_reads_stdin_once(tmp_path, monkeypatch):
    import io

    import storyloom
    from storyloom.prepared import load_prepared

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"from standard input\n" * 30)))
    storyloom.prepare(["-"], tmp_path / "p", val_fraction=0.1, progress=False)
    c, _ = load_prepared(tmp_path / "p")
    assert c.tokenizer.decode(c.train) + c.tokenizer.decode(c.val) == "from standard input\n" * 30


@pytest.mark.parametrize("damage, message", [("flip", r"train.bin: its SHA-256 differs from manifest.json"),
                                             ("cut", r"val.bin: truncated"),
                                             ("newer", r"prepared.json: written by a newer storyloom \(file format 99")])
def test_fault_a_damaged_or_newer_prepared_corpus_is_refused(tmp_path, sonnets, damage, message):
    import json

    import storyloom
    from storyloom.prepared import load_prepared

    (tmp_path / "s.txt").write_text(sonnets)
    prep = tmp_path / "prep"
    storyloom.prepare([str(tmp_path / "s.txt")], prep, progress=False)
    manifest = json.loads((prep / "manifest.json").read_text())
    assert manifest["format"] == 1 and set(manifest) == {"format", "train.bin", "val.bin", "vocab.json"}
    load_prepared(prep)  # whole, it verifies
    if damage == "flip":
        data = bytearray((prep / "train.bin").read_bytes())
        data[1000] ^= 1
        (prep / "train.bin").write_bytes(bytes(data))
    elif damage == "cut":
        (prep / "val.bin").write_bytes((prep / "val.bin").read_bytes()[:-10])
    else:
        meta = json.loads((prep / "prepared.json").read_text())
        (prep / "prepared.json").write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(UserError, match=message):
        storyloom.train([str(prep)], out=tmp_path / "r", steps=1, progress=False)
    assert not (tmp_path / "r").exists()
