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
    assert tok.encode("abc") == [0, 1, 2]
    assert tok.ids("abc").dtype == np.uint8


def test_unknown_characters_are_listed():
    tok = CharTokenizer.fit("abc")
    with pytest.raises(UserError, match=r"never seen in training: 'x' 'z'.*--unknown replace"):
        tok.ids("abxcz", what="the prompt")


def test_unknown_replace_maps_to_replacement():
    tok = CharTokenizer.fit("ab ba")
    assert tok.decode(tok.encode("abxq", unknown="replace")) == "ab  "


def test_large_vocab_uses_wider_dtype():
    text = "".join(chr(0x4E00 + i) for i in range(300))
    tok = CharTokenizer.fit(text)
    assert tok.ids(text).dtype == np.uint16
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


# -- word and BPE levels ---------------------------------------------------
import math  # noqa: E402

from storyloom.tokenize import BPETokenizer, WordTokenizer, from_dict  # noqa: E402

WORDY = TRICKY + ["don't o'er 'tis rock'n'roll \u2019twas", "  leading and trailing  ", "\n\n\n\t \n", "3.14159 and 2,000,000 1st",
                  "na\u00efve CAF\u00c9 \u00c5ngstr\u00f6m \u0391\u03b8\u03ae\u03bd\u03b1", "under_score snake_case __init__",
                  "\U0001f600\U0001f600 \u2764\ufe0f\u200d\U0001f525", "\r\nwindows\r\n", "a\u0301 combining", "\ufeffbom"]


@pytest.mark.parametrize("text", WORDY)
def test_word_round_trip(text):
    tok = WordTokenizer.fit(text)
    assert tok.decode(tok.encode(text)) == text
    again = from_dict(tok.to_dict())
    assert again.decode(again.encode(text)) == text


@pytest.fixture(scope="module")
def bpe(sonnets):
    return BPETokenizer.fit(sonnets, 400)


@pytest.mark.parametrize("text", WORDY)
def test_bpe_round_trip(bpe, text):
    ids = bpe.encode(text)  # byte level: any text, seen or not
    assert bpe.decode(ids) == text
    assert from_dict(bpe.to_dict()).encode(text) == ids
    piece = bpe.stream()
    assert "".join(piece(i) for i in ids) == text  # streamed, characters whole


def test_word_tokens_are_words_punctuation_and_whitespace_runs():
    tok = WordTokenizer.fit("Don't  stop,\nnow!")
    assert [tok.decode([i]) for i in tok.encode("Don't  stop,\nnow!")] == ["Don't", "  ", "stop", ",", "\n", "now", "!"]


def test_word_vocabulary_caps_and_unknown_words():
    tok = WordTokenizer.fit("the cat the dog the cat a", max_vocab=3, min_count=1)
    assert tok.tokens == ["<unk>", " ", "the"]  # <unk>, then by frequency
    tok = WordTokenizer.fit("the cat the dog the cat a", min_count=2)
    assert tok.tokens == ["<unk>", " ", "the", "cat"]
    with pytest.raises(UserError, match=r"1 word\(s\) never seen in training: 'dog'"):
        tok.ids("the dog", what="the prompt")
    assert tok.encode("the dog", unknown="replace") == [2, 1, 0]


def test_word_bpc_charges_unknown_spellings_by_hand():
    from storyloom.model import LanguageModel
    from storyloom.config import ModelConfig
    from storyloom.train import evaluate

    import torch

    train = "ab ab ab cd"
    tok = WordTokenizer.fit(train, min_count=2)  # <unk>, "ab", " "
    assert tok.tokens == ["<unk>", " ", "ab"]
    text = "ab zq ab"  # zq is unknown: z never seen, q never seen
    s = tok.scored(text)
    assert s.ids.tolist() == [2, 1, 0, 1, 2] and s.chars == len(text) - 2
    # the bigram spelling model over training tokens ("ab" x3, " " x3, "cd"): 7 tokens start and end;
    # unigram: add-one over a, b, ' ', c, d, end and other; neither z nor q was seen
    z = (3 + 3 + 3 + 1 + 1) + 7 + 5 + 2
    other, end, K = 1 / z / 0x110000, (7 + 1) / z, WordTokenizer.PRIOR
    spelling = -math.log(K * other / (7 + K)) - math.log(other) - math.log(end)  # start->z, z->q, q->end
    assert s.extra_nats == pytest.approx(spelling)
    # a uniform word model: log V nats for each of the 4 scored tokens
    m = LanguageModel(ModelConfig(vocab_size=len(tok), hidden=8, layers=1, embed=4, dropout=0.0))
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.bias.zero_()
    r = evaluate(m, s.ids, chars=s.chars, extra_nats=s.extra_nats)
    assert r["bpc"] == pytest.approx((4 * math.log(3) + spelling) / 6 / math.log(2))
    assert r["token_perplexity"] == pytest.approx(3.0) and r["tokens"] == 4


def test_bpe_scores_characters_after_the_first_token(bpe):
    s = bpe.scored("Shall I compare thee")
    first = bpe.decode(s.ids[:1])
    assert s.chars == len("Shall I compare thee") - len(first) and s.extra_nats == 0
