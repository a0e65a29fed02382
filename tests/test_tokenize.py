import numpy as np
import pytest

from storyloom.errors import UserError
from storyloom.tokenize import CharTokenizer

TRICKY = ["", "a", "hello world", "line\nbreak\r\nCRLF", "caf\u00e9 na\u00efve \u00fcber", "emoji \U0001f600\U0001f389 \u2764\ufe0f",
          "\u4e2d\u6587\u5b57", "tabs\tand  spaces   ", "\u0000nul", "'quotes' \"double\" \u201ccurly\u201d"]


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip(text):
    tok = CharTokenizer.fit(text)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert CharTokenizer.from_dict(tok.to_dict()).decode(ids) == text


def test_ids_follow_sorted_vocabulary():
    tok = CharTokenizer.fit("cab")
    assert tok.chars == ["a", "b", "c"]
    assert tok.encode("abc").tolist() == [0, 1, 2]
    assert tok.encode("abc").dtype == np.uint8


def test_unknown_characters_are_listed():
    tok = CharTokenizer.fit("abc")
    with pytest.raises(UserError, match=r"never seen in training: 'x' 'z'.*--unknown replace"):
        tok.encode("abxcz", what="the prompt")


def test_unknown_replace_maps_to_replacement():
    tok = CharTokenizer.fit("ab ba")
    assert tok.decode(tok.encode("abxq", unknown="replace")) == "ab  "


def test_large_vocab_uses_wider_dtype():
    text = "".join(chr(0x4E00 + i) for i in range(300))
    tok = CharTokenizer.fit(text)
    assert tok.encode(text).dtype == np.uint16
    assert tok.decode(tok.encode(text)) == text


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1), st.text())
def test_fuzz_round_trip_and_unseen_characters(train, other):
    tok = CharTokenizer.fit(train)
    assert tok.decode(tok.encode(train)) == train
    assert CharTokenizer.from_dict(tok.to_dict()).decode(tok.encode(train)) == train
    unseen = set(other) - set(train)
    if unseen:
        with pytest.raises(UserError, match="never seen"):
            tok.encode(other, "error")
    else:
        assert tok.decode(tok.encode(other)) == other
    replaced = tok.encode(other, "replace")
    assert len(replaced) == len(other) and set(tok.decode(replaced)) <= set(train)
