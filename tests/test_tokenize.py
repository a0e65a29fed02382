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


# -- long texts in pieces: cut where every level's tokens break, they give the whole text's tokens ------------
from collections import Counter  # noqa: E402

from storyloom.tokenize import SAFE_CUT, WORD, Rejoin, fit, fit_pieces, safe_cuts  # noqa: E402

BITS = ["a", "Z", "9", "'", "\u2019", "_", ".", ",", "--", " ", "  ", "\n", "\n\n", "\t", "don't", "o\u2019er", "\u00e9",
        "e\u0301", "\u00a0", "\u2028", "\u3000", "\U0001F600", "word", "Word", "\u00c9tienne", "42", "'s", " 've"]
SNIPPETS = st.lists(st.sampled_from(BITS), max_size=40).map("".join)


def tokens(level, bpe, text):
    """The strings each level cuts a text into (not ids: different unknown words share one id); at BPE level the
    pre-tokens as well, which a larger vocabulary could merge differently though these merges agree."""
    if level == "word":
        return (WORD.findall(text),)
    return [p for p, _ in bpe.tok.pre_tokenizer.pre_tokenize_str(text)], bpe.tok.encode(text).tokens


def cat(*parts):
    """tokens() of consecutive pieces, joined as those of one text would be."""
    return tuple(sum(column, []) for column in zip(*parts))


@settings(max_examples=300, deadline=None)
@given(left=SNIPPETS, last=st.sampled_from([chr(c) for c in range(0x21, 0x7F)]), space=st.sampled_from([" ", "\n"]),
       right=SNIPPETS)
@pytest.mark.parametrize("level", ["word", "bpe"])
def test_fuzz_a_safe_cut_splits_every_level_s_tokens(bpe, level, left, last, space, right):
    a, b = left + last, space + right
    assert safe_cuts(a + b, 1) and len(a) in safe_cuts(a + b, 1)
    assert tokens(level, bpe, a + b) == cat(tokens(level, bpe, a), tokens(level, bpe, b))


@settings(max_examples=300, deadline=None)
@given(left=SNIPPETS, before=st.sampled_from(BITS + ["\u5b57", "\u3002", "\u00e9", "!"]),
       after=st.sampled_from(BITS + ["\u5b57", "\u3002", "\u00e9", "#"]), right=SNIPPETS)
@pytest.mark.parametrize("level", ["word", "bpe"])
def test_fuzz_a_lone_newline_between_visible_characters_splits_every_level_s_tokens(bpe, level, left, before, after,
                                                                                    right):
    a, b = left + before + "\n", after + right
    if before[-1].isspace() or after[0].isspace():
        return  # not such a cut
    assert len(a) in safe_cuts(a + b, 1)
    assert tokens(level, bpe, a + b) == cat(tokens(level, bpe, a), tokens(level, bpe, b))


@settings(max_examples=300, deadline=None)
@given(text=st.lists(st.sampled_from(BITS + ["\u5b57", "\u3002", "\n", " \n", "\n "]), max_size=40).map("".join))
@pytest.mark.parametrize("level", ["word", "bpe"])
def test_fuzz_every_safe_cut_of_a_text_splits_its_tokens(bpe, level, text):
    whole = tokens(level, bpe, text)
    for m in SAFE_CUT.finditer(text):
        p = m.start()
        assert cat(tokens(level, bpe, text[:p]), tokens(level, bpe, text[p:])) == whole, p


def test_safe_cuts_are_first_last_and_every_size_between():
    text = "x " * 50  # a cut after every x
    cuts = safe_cuts(text, 10)
    assert cuts[0] == 1 and cuts[-1] == 99 and all(10 <= b - a <= 12 for a, b in zip(cuts, cuts[1:-1]))
    assert safe_cuts("  \n\u00e9\u00e9 \u00e9", 1) == [] and safe_cuts("", 1) == []
    assert safe_cuts("a" * 100_000 + " ", 1) == [100_000]  # found from the end past its first window
    assert safe_cuts("\u5b57\u5b57\n\u5b57\n\n\u5b57", 1) == [3]  # after a lone newline between characters


@settings(max_examples=150, deadline=None)
@given(text=SNIPPETS, cuts=st.lists(st.integers(0, 200), max_size=6), size=st.integers(1, 30))
@pytest.mark.parametrize("level", ["word", "bpe"])
def test_fuzz_rejoined_pieces_encode_as_the_whole(bpe, level, text, cuts, size):
    edges = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    rejoin, out = Rejoin(size), []
    for a, b in zip(edges, edges[1:]):
        out += rejoin.feed(text[a:b])
    out += rejoin.close()
    assert "".join(out) == text and all(out)
    assert cat(tokens(level, bpe, ""), *(tokens(level, bpe, piece) for piece in out)) == tokens(level, bpe, text)


@settings(max_examples=40, deadline=None)
@given(text=SNIPPETS.filter(lambda t: t.strip()), cuts=st.lists(st.integers(0, 200), max_size=5))
@pytest.mark.parametrize("level", ["word", "bpe"])
def test_fuzz_a_tokenizer_fitted_on_pieces_is_the_one_fitted_on_the_whole(level, text, cuts):
    text = text * 20
    edges = sorted({min(c * 7, len(text)) for c in cuts} | {0, len(text)})
    whole = fit(text, level, vocab_size=300, max_vocab=0)
    assert fit_pieces((text[a:b] for a, b in zip(edges, edges[1:])), level, 300, 0).to_dict() == whole.to_dict()


def test_word_counts_of_rejoined_pieces_are_the_whole_text_s():
    text = "don't stop. O\u2019er the hills,   far away\n\n" * 30
    rejoin, tok, ch = Rejoin(7), Counter(), Counter()
    for piece in [*rejoin.feed(text[:101]), *rejoin.feed(text[101:]), *rejoin.close()]:
        t, c = WordTokenizer.counts(piece)
        tok.update(t)
        ch.update(c)
    assert (tok, ch) == (Counter(WORD.findall(text)), Counter(text))
    # the vocabulary keeps its characters in code-point order, however they were counted
    assert list(WordTokenizer.from_counts(tok, ch).char_counts) == sorted(set(text))


@pytest.mark.parametrize("level", ["char", "word", "bpe"])
def test_scores_of_later_pieces_sum_to_the_whole_text_s(sonnets, level):
    text = sonnets[:3000]
    tok = fit(sonnets[3000:], level, vocab_size=300, max_vocab=200)
    whole = tok.scored(text, "replace")
    rejoin = Rejoin(50)
    parts = [*rejoin.feed(text), *rejoin.close()]
    scores = [tok.scored(p, "replace", opens=i == 0) for i, p in enumerate(parts)]
    assert len(parts) > 10
    assert np.array_equal(np.concatenate([s.ids for s in scores]), whole.ids)
    assert sum(s.chars for s in scores) == whole.chars
    assert math.isclose(sum(s.extra_nats for s in scores), whole.extra_nats, rel_tol=1e-9)
    assert level != "word" or whole.extra_nats > 0  # unknown words were charged
