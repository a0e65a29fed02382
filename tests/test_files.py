import json
import os

import pytest
import torch

from storyloom import files
from storyloom.errors import UserError


def test_dumps_stamps_the_format_and_parse_checks_it(tmp_path):
    data = files.dumps({"a": 1})
    assert json.loads(data) == {"a": 1, "format": files.FORMAT}
    assert files.parse_json(tmp_path / "x.json", data)["a"] == 1
    assert files.parse_json(tmp_path / "x.json", b'{"a": 1}') == {"a": 1}  # format 0: written before formats were numbered
    newer = json.dumps({"a": 1, "format": files.FORMAT + 1}).encode()
    with pytest.raises(UserError, match=rf"x.json: written by a newer storyloom \(file format {files.FORMAT + 1}; this one reads "
                                        rf"formats up to {files.FORMAT}\); upgrade storyloom to open it"):
        files.parse_json(tmp_path / "x.json", newer)
    with pytest.raises(UserError, match="x.json: damaged JSON"):
        files.parse_json(tmp_path / "x.json", b"{not json")


def test_write_atomic_replaces_whole_and_leaves_no_temporary_file(tmp_path):
    p = tmp_path / "f.bin"
    files.write_atomic(p, b"old")
    files.write_atomic(p, b"new contents")
    assert p.read_bytes() == b"new contents" and os.listdir(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("damage, message", [(lambda d: d[: len(d) // 2], "truncated: 50 of 100 bytes"),
                                             (lambda d: d[:10] + bytes([d[10] ^ 1]) + d[11:], "SHA-256 differs")])
def test_verify_catches_damage_in_memory_and_on_disk(tmp_path, damage, message):
    data = os.urandom(100)
    entry = files.entry(data)
    p = tmp_path / "big.bin"
    p.write_bytes(data)
    assert files.entry(path=p) == entry
    assert files.verify(p, data, entry) == data and files.verify(p, None, entry) is None
    p.write_bytes(damage(data))
    for given in (damage(data), None):
        with pytest.raises(UserError, match=message):
            files.verify(p, given, entry)
    with pytest.raises(UserError, match="not listed in its directory's manifest.json"):
        files.verify(p, data, None)


def test_a_write_in_flight_verifies_against_the_previous_entry(tmp_path):
    old, new = b"version one", b"version two!"
    entry = {**files.entry(new), "previous": files.entry(old)}
    assert files.verify(tmp_path / "f", old, entry) == old and files.verify(tmp_path / "f", new, entry) == new


def test_manifests_hold_entries_and_a_format(tmp_path):
    files.write_json(tmp_path / "manifest.json", {"a.bin": files.entry(b"x")})
    assert files.read_manifest(tmp_path / "manifest.json") == {"a.bin": files.entry(b"x")}
    (tmp_path / "manifest.json").write_text(json.dumps({"a.bin": "nonsense"}))
    with pytest.raises(UserError, match="not a storyloom manifest"):
        files.read_manifest(tmp_path / "manifest.json")


def test_pickles_are_refused_before_parsing(tmp_path):
    p = tmp_path / "weights.safetensors"
    p.write_bytes(b"\x80\x04\x95 pickle bytes")
    with pytest.raises(UserError, match="never unpickles"):
        files.read_bytes(p)
    torch.save({"w": torch.zeros(2)}, tmp_path / "m.pt")
    assert files.looks_pickled((tmp_path / "m.pt").read_bytes())  # torch's zip holds a pickle
    assert not files.looks_pickled(files.tensor_bytes({"w": torch.zeros(2)}))
    with pytest.raises(UserError, match="missing"):
        files.read_bytes(tmp_path / "nope")


def test_tensor_bytes_copies_shared_tensors():
    w = torch.randn(3, 4)
    back = files.parse_tensors("t", files.tensor_bytes({"a": w, "b": w}))  # a tied head and embedding share memory
    assert torch.equal(back["a"], w) and torch.equal(back["b"], w)
    with pytest.raises(UserError, match="t: damaged weights file"):
        files.parse_tensors("t", b"not safetensors")


def test_a_filled_file_is_hashed_as_it_is_filled_in_any_stretches(tmp_path):
    """Filled's entry is the whole file's, however its writers' progress arrives (other processes write in place)."""
    data = os.urandom(300_000)
    path = tmp_path / "t.bin"
    path.write_bytes(bytes(len(data)))
    f = files.Filled(path)
    f.WRITE_BACK = 50_000  # several write-backs on the way
    for end in (0, 1, 70_000, 70_000, 250_001, len(data)):
        with open(path, "r+b") as w:  # a writer fills up to `end`, then says so
            w.write(data[:end])
        f.upto(end)
    assert f.close() == files.entry(path=path) == {"sha256": files.sha256(data), "bytes": len(data)}


def test_a_filled_file_not_hashed_to_its_end_has_no_entry(tmp_path):
    path = tmp_path / "t.bin"
    path.write_bytes(b"x" * 1000)
    f = files.Filled(path)
    f.upto(999)
    with pytest.raises(OSError, match="hashed 999 bytes of 1000"):
        f.close()
    assert f.fd == -1  # closed all the same
