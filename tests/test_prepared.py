import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    from storyloom.cli import invocation

    assert f"train with: {invocation()} train {tmp_path / 'prep'}" in capsys.readouterr().out
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
             "b.txt": "beta alpha é\n" * 40 + "\u03c9\n", "c.txt": "", "d.txt": "epsilon — zeta gamma delta\n" * 25}
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
    assert c.val_only == direct.val_only == ("\u03c9",) == tuple(meta["val_only"])  # only b.txt's tail has it
    assert meta["dtype"] == "uint8" and c.train.dtype == np.uint8


def test_char_prepare_errors_from_a_worker_are_one_line(tmp_path):
    import storyloom

    (tmp_path / "a.txt").write_text("aaaa bbbb " * 50)
    (tmp_path / "b.txt").write_bytes(b"ab\xffz")
    with pytest.raises(UserError, match=r"b.txt.*(utf-8|decode).*--encoding"):
        storyloom.prepare([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], tmp_path / "p", val_files=("b.txt",),
                          workers=2, progress=False)
    assert not (tmp_path / "p" / "prepared.json").exists()


def test_a_prepared_corpus_with_a_validation_only_character_trains_and_says_so(tmp_path, capsys):
    import storyloom

    from conftest import TINY

    (tmp_path / "a.txt").write_text("aaaa bbbb " * 50)
    (tmp_path / "b.txt").write_text("abz")
    storyloom.prepare([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], tmp_path / "p", val_files=("b.txt",), workers=2,
                      progress=False)
    assert "only in the validation text ('z')" in capsys.readouterr().err
    run = storyloom.train([str(tmp_path / "p")], out=tmp_path / "r", steps=2, progress=False, **TINY)
    assert "only in the validation text ('z')" in capsys.readouterr().err
    assert "z" in storyloom.load(run).tokenizer.chars


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


# -- a large file read in pieces gives exactly the ids of the file read whole --------------------------------
HEADER = ("The Project Gutenberg EBook of Foo\r\n\r\n*** START OF THIS PROJECT GUTENBERG EBOOK FOO ***\r\n\r\n\r\n"
          "Produced by Jane Doe and the Online\r\nDistributed Proofreading Team\r\n\r\n\r\n")
FOOTER = "\r\n*** END OF THIS PROJECT GUTENBERG EBOOK FOO ***\r\n\r\nlicence text\r\n"
LINES = ["It was a dark night; the rain fell.", "cafe\u0301 au lait, d\u00e9j\u00e0 vu", "", "   ", "CHAPTER II",
         "*** START OF THE PROJECT GUTENBERG EBOOK quoted late ***", "\u00c9tienne said: \u201cno.\u201d", "x" * 90]


def prepare_both(tmp_path, files: dict[str, str], piece_bytes: int, workers: int = 2, **data):
    from storyloom.config import DataConfig
    from storyloom.prepared import prepare_corpus
    from storyloom.sources import locate

    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for name, text in files.items():
        (src / name).write_bytes(text.encode("utf-8"))
    cfg = DataConfig(**data)
    whole = prepare_corpus(locate([str(src)]), cfg, tmp_path / "whole", progress=False, workers=workers)
    pieces = prepare_corpus(locate([str(src)]), cfg, tmp_path / "pieces", progress=False, workers=workers, piece_bytes=piece_bytes)
    for name in ("train.bin", "val.bin", "vocab.json"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "pieces" / name).read_bytes(), name
    assert {k: v for k, v in whole.items() if k != "sources"} == {k: v for k, v in pieces.items() if k != "sources"}
    return whole


@pytest.mark.parametrize("piece_bytes", [40, 97, 256, 1000])
@pytest.mark.parametrize("data", [{}, {"val_fraction": 0.3}, {"lowercase": True}, {"val_files": ("b.txt",)}])
def test_a_file_in_pieces_gives_the_ids_of_the_whole_file(tmp_path, piece_bytes, data):
    body = "\r\n".join(LINES * 6)
    files = {"a.txt": "\ufeff" + HEADER + body + FOOTER, "b.txt": "Produced by nobody\n\n" + body,
             "c.txt": body + "\n\u00a7 only the validation tail has this mark\n"}
    meta = prepare_both(tmp_path, files, piece_bytes, **data)
    assert meta["train_tokens"] > 1000


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from([HEADER, FOOTER, "\n", "\r\n", "\n\n\n", "Produced by X\n\n", "\ufeff", "a\u0301",
                                       "END OF PROJECT GUTENBERG\n", *LINES]), min_size=1, max_size=40),
       piece_bytes=st.integers(8, 300), lowercase=st.booleans())
def test_fuzz_pieces_equal_the_whole_file_wherever_markers_fall(tmp_path_factory, parts, piece_bytes, lowercase):
    tmp = tmp_path_factory.mktemp("pieces")
    text = "".join(parts) + "\nthe end of the text, long enough for a validation tail\n"
    prepare_both(tmp, {"a.txt": text, "b.txt": "Another work entirely.\n" * 5}, piece_bytes, workers=1, lowercase=lowercase)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from([HEADER, FOOTER, "\n", "\r\n", "\n\n\n", "Produced by X\n\n", "\ufeff", "a\u0301",
                                       "END OF PROJECT GUTENBERG\n", "\u03a3 \u0130 ", *LINES]), min_size=1, max_size=40),
       ascii=st.booleans(), lowercase=st.booleans(),
       split=st.sampled_from([{}, {"val_fraction": 0.3}, {"val_files": ("b.txt",)}]))
def test_fuzz_char_files_read_whole_equal_the_in_memory_corpus(tmp_path_factory, parts, ascii, lowercase, split):
    # A file read whole is cleaned once, in the counting pass, which says where its parts lie in its text; the
    # encoding pass slices them out. Outside ASCII, lowercasing may change lengths (\u0130) or depend on context
    # (\u03a3), and such a file is split as split_one splits it, in both passes.
    tmp = tmp_path_factory.mktemp("whole")
    text = "".join(parts) + "\nthe end of the text, long enough for a validation tail\n"
    if ascii:
        text = text.encode("ascii", "ignore").decode()
    files = {"a.txt": text, "b.txt": "Another work entirely.\n" * 5, "c.txt": "More training text.\n" * 5}
    prepare_vs_build(tmp, files, 1 << 24, workers=1, lowercase=lowercase, **split)


@given(sizes=st.lists(st.integers(0, 100), max_size=30), limit=st.integers(1, 150))
def test_batches_cover_the_jobs_in_order_each_within_the_limit_or_alone(sizes, limit):
    from storyloom.prepared import batches

    runs = batches(sizes, limit)
    assert [a for a, _ in runs] == ([0] + [b for _, b in runs[:-1]] if runs else []) and (runs[-1][1] if runs else 0) == len(sizes)
    for a, b in runs:
        assert b > a and (sum(sizes[a:b]) <= limit or b - a == 1)
    for (a, b), (c, _) in zip(runs, runs[1:]):
        assert sum(sizes[a : c + 1]) > limit  # no run could have taken the next job too


def test_pieces_split_after_newlines_and_cover_the_file(tmp_path):
    from storyloom.prepared import pieces

    p = tmp_path / "f.txt"
    p.write_bytes(b"ab\ncdefgh\n\nij" + b"k" * 100 + b"\nlast")
    ps = pieces(p, 4)
    data = p.read_bytes()
    assert ps[0].start == 0 and ps[-1].end == len(data) and all(a.end == b.start for a, b in zip(ps, ps[1:]))
    assert all(data[q.end - 1 : q.end] == b"\n" for q in ps[:-1])


def test_an_undecodable_byte_in_a_piece_names_its_offset_in_the_file(tmp_path):
    from storyloom.config import DataConfig
    from storyloom.prepared import prepare_corpus
    from storyloom.sources import locate

    (tmp_path / "bad.txt").write_bytes(b"good line\n" * 50 + b"caf\xe9\n" + b"more\n" * 50)
    with pytest.raises(UserError, match=r"bad.txt: not valid utf-8 text \(byte 0xe9 at offset 503\)"):
        prepare_corpus(locate([str(tmp_path / "bad.txt")]), DataConfig(), tmp_path / "out", progress=False, piece_bytes=64)


# -- word and BPE levels stream too: a file or piece at a time, the ids of the whole text --------------------
def prepare_vs_build(tmp_path, files: dict[str, str], piece_bytes: int, workers: int = 2, **data):
    import math

    import numpy as np

    from storyloom.config import DataConfig
    from storyloom.prepared import load_prepared, prepare_corpus
    from storyloom.sources import locate

    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for name, text in files.items():
        (src / name).write_bytes(text.encode("utf-8"))
    cfg = DataConfig(**{"vocab_size": 300, "max_vocab": 60, **data})
    meta = prepare_corpus(locate([str(src)]), cfg, tmp_path / "prep", progress=False, workers=workers, piece_bytes=piece_bytes)
    c, _ = load_prepared(tmp_path / "prep")
    direct = build(read([str(src)]), cfg)  # everything in memory at once: the reference
    assert np.array_equal(c.train, direct.train) and np.array_equal(c.val, direct.val)
    assert c.tokenizer.to_dict() == direct.tokenizer.to_dict()
    assert (c.val_chars, c.train_chars, c.train_names, c.val_names) == (
        direct.val_chars, direct.train_chars, direct.train_names, direct.val_names)
    assert math.isclose(c.val_extra_nats, direct.val_extra_nats, rel_tol=1e-9, abs_tol=1e-9)
    return meta, direct


@pytest.mark.parametrize("level", ["word", "bpe"])
@pytest.mark.parametrize("piece_bytes", [40, 256, 1 << 24])
@pytest.mark.parametrize("data", [{}, {"lowercase": True}, {"val_files": ("b.txt",)}])
def test_word_and_bpe_prepare_in_pieces_equal_the_in_memory_corpus(tmp_path, level, piece_bytes, data):
    body = "\r\n".join(LINES * 6)
    files = {"a.txt": "\ufeff" + HEADER + body + FOOTER, "b.txt": "Produced by nobody\n\n" + body,
             "c.txt": body + "\n\u00a7 only the validation tail has this mark\n", "d.txt": "nospaceatall" * 30}
    meta, direct = prepare_vs_build(tmp_path, files, piece_bytes, level=level, **data)
    assert meta["train_tokens"] > 300 and meta["val_only"] == []
    if level == "word" and "val_files" not in data:
        assert direct.val_extra_nats > 0  # words rarer than the vocabulary's are <unk>, their spelling charged


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from([HEADER, FOOTER, "\n", "\r\n", "\n\n\n", "Produced by X\n\n", "\ufeff", "a\u0301",
                                       "END OF PROJECT GUTENBERG\n", "  ", "word", *LINES]), min_size=1, max_size=40),
       piece_bytes=st.integers(8, 300), lowercase=st.booleans(), level=st.sampled_from(["word", "bpe"]))
def test_fuzz_word_and_bpe_pieces_equal_the_whole_text_wherever_cuts_fall(tmp_path_factory, parts, piece_bytes,
                                                                            lowercase, level):
    tmp = tmp_path_factory.mktemp("tokens")
    text = "".join(parts) + "\nthe end of the text, long enough for a validation tail\n"
    prepare_vs_build(tmp, {"a.txt": text, "b.txt": "Another work entirely.\n" * 5}, piece_bytes, level=level,
                     lowercase=lowercase)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("level", ["word", "bpe"])
def test_word_and_bpe_middles_encoded_in_many_texts_equal_the_in_memory_corpus(tmp_path, monkeypatch, level, workers):
    """Each piece's middle is encoded in texts cut about CUT characters apart (64K, so a small test text has one):
    here 16, so every middle is many texts, counted and encoded here or in worker processes (they fork with this
    value)."""
    from storyloom import prepared

    monkeypatch.setattr(prepared, "CUT", 16)
    body = "\r\n".join(LINES * 6)
    files = {"a.txt": HEADER + body + FOOTER, "b.txt": body + "\nnospaceatall" * 30 + "\n" + body}
    for piece_bytes in (200, 1 << 24):
        (tmp_path / str(piece_bytes)).mkdir()
        prepare_vs_build(tmp_path / str(piece_bytes), files, piece_bytes, workers, level=level)
