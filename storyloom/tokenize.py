"""Text <-> token ids at three levels; the vocabulary is fitted on training text and saved in every run.

    char  one id per distinct character (the seeds' model)
    word  words, single punctuation marks and whitespace runs, plus <unk>
    bpe   byte-level BPE trained with Hugging Face `tokenizers`

Each level round-trips exactly: decode(encode(text)) == text for any text
the vocabulary covers (BPE covers every text). Each tokenizer offers:

    encode(text) -> list[int], decode(ids) -> str     the public pair (m.tokenizer)
    ids(text, unknown, what) -> np.ndarray            the same, vectorised, for corpora
    scored(text, unknown) -> Scored                   ids plus what bpc needs (see below)
    primer(), banned(chars, unknown), never(), stream(), words_are_tokens

A long text is encoded in pieces cut where every level's tokens break
whatever surrounds the cut (`safe_cuts`), so the pieces' ids are the whole
text's: what lets `storyloom prepare` encode a file larger than memory.

bpc compares across levels because it is measured in characters: the total
nats of every token after the first (the first is context), plus the nats
charged for spelling out each <unk> (word level), over the characters those
tokens cover.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from .errors import UserError

@dataclass
class Scored:
    ids: np.ndarray  # token ids of the whole text
    chars: int  # characters covered by the scored tokens (all but the first)
    extra_nats: float  # nats charged outside the model: spelling out <unk> tokens


def _codepoints(text: str) -> np.ndarray:
    """The text's code points: uint8 for ASCII text (a copy at memory speed), else uint32 (via UTF-32)."""
    if text.isascii():  # a flag CPython keeps on every string: free to ask
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def char_counts(text: str, block: int = 1 << 16) -> np.ndarray:
    """How often each code point occurs: counts[cp]. What the character vocabulary is fitted from, summed over documents.

    Counted in blocks: bincount widens its input to 8-byte indices, and a block's stay in cache (5x faster here).
    """
    cps = _codepoints(text)
    counts = np.zeros(256 if cps.dtype == np.uint8 else int(cps.max(initial=0)) + 1, dtype=np.int64)
    for i in range(0, len(cps), block):
        counts += np.bincount(cps[i : i + block], minlength=len(counts))
    return counts


def _show(items) -> str:
    return " ".join(repr(c) for c in sorted(items)[:20]) + (" ..." if len(items) > 20 else "")


def _dtype(n: int) -> np.dtype:
    """The smallest unsigned type that holds every id."""
    return np.dtype(np.uint8 if n <= 256 else np.uint16 if n <= 65536 else np.uint32)


def _unknown_error(what: str, kind: str, missing) -> UserError:
    return UserError(f"{what} has {len(missing)} {kind} never seen in training: {_show(missing)}; "
                     "remove them or pass --unknown replace")


# Two kinds of cut are token boundaries at every level, whatever text lies on
# either side, so each side encodes alone to exactly its share of the whole
# text's ids:
# 1. between a visible ASCII character and a space or newline. Word level
#    (WORD): a word, whitespace run or mark never spans it, and no token left
#    of it looks past it (a word continues only with a letter, digit or
#    apostrophe). BPE (GPT-2's pre-tokenizer pattern, which ByteLevel applies
#    before merging within each pre-token): letters, digits and punctuation
#    runs stop at whitespace, a pre-token may start with one space but never
#    end with one, and the only pattern that looks ahead (`\s+(?!\S)`) starts
#    at whitespace, right of the cut. ASCII only, so the two regex engines'
#    differing ideas of exotic whitespace never matter.
# 2. just after a lone newline, with no whitespace either side of it (text
#    without spaces, as Chinese or Japanese is written, cuts only here). The
#    newline is one token at both levels, looked at from either side: a
#    whitespace run of one, and `\s+(?!\S)` matches it alone whether a
#    character or the end follows. Python's whitespace includes every
#    character the Rust engine's does, so "not whitespace" here is so there.
SAFE_CUT = re.compile(r"(?<=[!-~])(?=[ \n])|(?<=\S\n)(?=\S)")


def safe_cuts(text: str, size: int = 1 << 16) -> list[int]:
    """Positions where `text` may be cut (SAFE_CUT): its first and last, and between them one at least `size`
    characters after the one before; [] when it has none."""
    first = SAFE_CUT.search(text)
    if first is None:
        return []
    window, last = 4096, None
    while last is None:  # the last cut, looked for from the end in growing windows
        start = max(len(text) - window, 0)
        for m in SAFE_CUT.finditer(text, start):
            last = m.start()
        window *= 8
    cuts, at = [first.start()], first.start()
    while True:
        m = SAFE_CUT.search(text, at + size)
        if m is None or m.start() >= last:
            break
        at = m.start()
        cuts.append(at)
    return cuts + [last] if last > cuts[-1] else cuts


# How far apart texts are cut for encoding. 64K: Hugging Face's BPE encodes a 1 MB text at half the speed of 64 KB
# ones (word level does not care).
CUT = 1 << 16


def cut(text: str, size: int = CUT) -> tuple[str, list[str], str] | None:
    """`text` at its safe cuts (safe_cuts, about `size` apart): (what is before the first, the texts between them,
    what is after the last); None where it has none."""
    cuts = safe_cuts(text, size)
    if not cuts:
        return None
    return text[: cuts[0]], [text[a:b] for a, b in zip(cuts, cuts[1:])], text[cuts[-1] :]


class Rejoin:
    """Consecutive pieces of one text in, texts cut only at safe cuts out (about `size` characters each): encoding
    each alone gives the whole text's ids. What a piece holds before its first cut joins what the piece before left
    after its last; a piece without a cut is held until one comes."""

    def __init__(self, size: int = CUT):
        self.carry: list[str] = []  # held pieces, joined once a cut comes (a text without any is held whole)
        self.size = size

    def feed(self, text: str) -> list[str]:
        parts = cut(text, self.size)
        if parts is None:
            self.carry.append(text)
            return []
        head, middle, tail = parts
        out = ["".join(self.carry) + head, *middle]
        self.carry = [tail]
        return [t for t in out if t]

    def close(self) -> list[str]:
        rest, self.carry = "".join(self.carry), []
        return [rest] if rest else []

    def each(self, pieces):
        """Every piece fed, then the rest: the texts of one stream, in order."""
        for piece in pieces:
            yield from self.feed(piece)
        yield from self.close()


class _Ids:
    """What every level shares once it has `ids` and a length: the id type and the public encode."""

    def dtype(self) -> np.dtype:
        return _dtype(len(self))

    def encode(self, text: str, unknown: str = "error") -> list[int]:
        """The public form of `ids`: text -> list of token ids."""
        return self.ids(text, unknown).tolist()

    def ids_many(self, texts: list[str], unknown: str = "error", what: str = "text") -> np.ndarray:
        """The ids of texts encoded each alone, one after another (prepare encodes a text in texts cut where no
        token spans a cut, so these are the whole text's)."""
        return self._joined([self.ids(t, unknown, what) for t in texts])

    def _joined(self, parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype())


def replacement_for(chars: list[str], counts: np.ndarray | None = None) -> str | None:
    """What an unseen character becomes under `--unknown replace`: a space where the text had spaces (least
    disruptive), else its commonest character (without counts, which a vocabulary alone lacks: its first)."""
    if not chars:
        return None
    if " " in chars:
        return " "
    return chr(int(np.argmax(counts))) if counts is not None else sorted(chars)[0]


class CharTokenizer(_Ids):
    """One id per distinct character, in code-point order.

    Encoding is vectorised through numpy: the text becomes an array of code
    points (via UTF-32) and a lookup table indexed by code point maps them to
    ids, so there is no per-character Python loop (100 MB encodes in about 2 s).
    """

    kind = "char"
    words_are_tokens = False
    charges_unknown = False  # an unseen character is refused, or replaced under --unknown replace

    def __init__(self, chars: list[str], replacement: str | None = None):
        if len(set(chars)) != len(chars) or any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("a character vocabulary holds distinct single characters")
        self.chars = sorted(chars)
        self._cps = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        # code point -> id, -1 for characters outside the vocabulary; the last
        # entry (-1) also stands for every code point above the largest one
        self._lut = np.full(int(self._cps.max()) + 2 if len(self._cps) else 1, -1, dtype=np.int32)
        self._lut[self._cps] = np.arange(len(self._cps), dtype=np.int32)
        # Unseen characters become this one under `--unknown replace` (from_counts chooses it; see there).
        self.replacement = replacement if replacement is not None else replacement_for(self.chars)

    @classmethod
    def fit(cls, text: str) -> "CharTokenizer":
        return cls.from_counts(char_counts(text))

    @classmethod
    def from_counts(cls, counts: np.ndarray) -> "CharTokenizer":
        """The vocabulary of every code point counted at least once (counts[cp], as char_counts gives)."""
        cps = np.nonzero(counts)[0]
        chars = [chr(c) for c in cps]
        return cls(chars, replacement_for(chars, counts))

    def __len__(self) -> int:
        return len(self.chars)

    def ids(self, text: str, unknown: str = "error", what: str = "text") -> np.ndarray:
        if not text:
            return np.zeros(0, dtype=self.dtype())
        if not len(self._cps):
            raise UserError("the vocabulary is empty: train on a non-empty text")
        if text.isascii() and len(self) < 255:
            # ASCII text and a small vocabulary: bytes.translate maps every byte at memory speed (4x numpy's
            # gather, which widens its indices); 255, which no id reaches, marks a character outside the vocabulary.
            ids = np.frombuffer(text.encode("ascii").translate(self._table()), dtype=np.uint8)
            if ids.max() < 255:  # the usual case: one pass, no copy
                return ids
            cps = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
            ids = ids.astype(np.int16)
            ids[ids == 255] = -1
        elif (cps := _codepoints(text)).dtype == np.uint8:
            ids = self._lut256()[cps]  # a new array: safe to edit below
        else:
            ids = self._lut[np.minimum(cps, len(self._lut) - 1)]
        bad = ids < 0
        if bad.any():
            if unknown != "replace":
                raise _unknown_error(what, "character(s)", {chr(c) for c in np.unique(cps[bad])})
            ids[bad] = self.chars.index(self.replacement)
        return ids.astype(self.dtype())

    def _table(self) -> bytes:
        """bytes.translate's table for one-byte code points: the id, or 255 outside the vocabulary."""
        if "_translate" not in self.__dict__:
            self._translate = bytes(int(i) if i >= 0 else 255 for i in self._lut256())
        return self._translate

    def _lut256(self) -> np.ndarray:
        """The lookup for one-byte code points, in the id type: small enough to stay in cache."""
        if "_lut_small" not in self.__dict__:
            lut = np.full(256, -1, dtype=np.int32)
            n = min(len(self._lut) - 1, 256)
            lut[:n] = self._lut[:n]
            self._lut_small = lut.astype(np.int16 if len(self) < 2**15 else np.int32)
        return self._lut_small

    def scored(self, text: str, unknown: str = "error", what: str = "text", opens: bool = True) -> Scored:
        """opens: the text's first token opens the stream, so it is context, not scored (False: a later piece)."""
        return Scored(self.ids(text, unknown, what), max(len(text) - opens, 0), 0.0)

    def decode(self, ids) -> str:
        ids = np.asarray(ids, dtype=np.int64)
        return self._cps[ids].tobytes().decode("utf-32-le", "surrogatepass")

    def primer(self) -> np.ndarray:
        """What an empty prompt starts from: a new line, as at the start of a paragraph."""
        return self.ids("\n" if "\n" in self.chars else self.chars[0])

    def banned(self, chars: str, unknown: str = "error") -> list[int]:
        return sorted(set(self.ids(chars, unknown, "--ban").tolist()))

    def never(self) -> list[int]:
        """Ids never to generate."""
        return []

    def boundaries(self) -> list[int]:
        """Ids that end a word, for offering next words."""
        return [self.chars.index(c) for c in (" ", "\n") if c in self.chars]

    def stream(self):
        """id -> text, for streaming: every id is one whole character."""
        return lambda i: self.chars[i]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars, "replacement": self.replacement}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        return cls(d["chars"], d.get("replacement"))


# A word is letters/digits with inner apostrophes ("don't", "o'er"); every
# whitespace run is one token; anything else is a token of one character.
# Together they cover every string, so decoding is concatenation.
WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*|\s+|.", re.S)
UNK = "<unk>"
OTHER_CODEPOINTS = 0x110000


class WordTokenizer(_Ids):
    """Words, punctuation marks and whitespace runs; the rest is <unk> (id 0).

    An <unk> is not free when scored: its spelling is charged under a
    character bigram model of the training tokens (start and end-of-token
    symbols; each bigram smoothed toward a unigram with add-one, an "other"
    symbol spread uniformly over all code points for characters never seen).
    The word model gives P(<unk>) and the spelling model P(spelling), which
    sums to at most 1 over all strings, so word-level bpc is an honest upper
    bound.
    """

    kind = "word"
    words_are_tokens = True
    charges_unknown = True  # unknown words are <unk>, their spelling charged when scored
    PRIOR = 30.0  # weight of the unigram in each smoothed bigram, in pseudo-counts

    def __init__(self, tokens: list[str], char_counts: dict[str, int], n_tokens: int, bigrams: list | None = None):
        if not tokens or tokens[0] != UNK or len(set(tokens)) != len(tokens):
            raise ValueError("a word vocabulary starts with <unk> and holds distinct tokens")
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}
        self.char_counts, self.n_tokens, self.bigrams = char_counts, n_tokens, bigrams or []
        z = sum(char_counts.values()) + n_tokens + len(char_counts) + 2  # add-one over chars, end, other
        self._uni = {c: (n + 1) / z for c, n in char_counts.items()}
        self._uni_end = (n_tokens + 1) / z
        self._uni_other = 1 / z / OTHER_CODEPOINTS  # one particular unseen code point
        self._pair = {(a, b): n for a, b, n in self.bigrams}  # "" is the start (as a) and the end (as b)
        self._ctx = Counter()
        for a, _, n in self.bigrams:
            self._ctx[a] += n

    @classmethod
    def fit(cls, text: str, max_vocab: int = 0, min_count: int = 1) -> "WordTokenizer":
        return cls.from_counts(*cls.counts(text), max_vocab, min_count)

    @classmethod
    def fit_pieces(cls, texts, max_vocab: int = 0, min_count: int = 1) -> "WordTokenizer":
        """Fitted on the concatenation of `texts`, read one at a time and counted in texts cut where tokens break."""
        tokens, chars = Counter(), Counter()
        for t in Rejoin().each(texts):
            tc, cc = cls.counts(t)
            tokens.update(tc)
            chars.update(cc)
        return cls.from_counts(tokens, chars, max_vocab, min_count)

    @staticmethod
    def counts(text: str) -> tuple[Counter, Counter]:
        """What fitting needs of a text: how often each token and each character occurs (sums over pieces cut at
        `safe_cuts`, in order, give the whole text's)."""
        counts = char_counts(text)  # 30x Counter(text)
        return Counter(WORD.findall(text)), Counter({chr(cp): int(counts[cp]) for cp in np.flatnonzero(counts)})

    @classmethod
    def from_counts(cls, counts: Counter, chars: Counter, max_vocab: int = 0, min_count: int = 1) -> "WordTokenizer":
        kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        if max_vocab:
            kept = kept[: max_vocab - 1]
        pairs: Counter = Counter()
        for t, n in counts.items():
            for a, b in zip(("", *t), (*t, "")):
                pairs[a, b] += n
        return cls([UNK, *kept], dict(sorted(chars.items())), sum(counts.values()),
                   sorted([a, b, n] for (a, b), n in pairs.items()))

    def spelling_nats(self, token: str) -> float:
        """What spelling out an unknown token costs, in nats: -log P(chars, end) under the bigram model."""
        nats = 0.0
        for a, b in zip(("", *token), (*token, "")):
            uni = self._uni_end if b == "" else self._uni.get(b, self._uni_other)
            nats -= math.log((self._pair.get((a, b), 0) + self.PRIOR * uni) / (self._ctx.get(a, 0) + self.PRIOR))
        return nats

    def __len__(self) -> int:
        return len(self.tokens)

    def _ids(self, pieces: list[str], unknown: str, what: str) -> np.ndarray:
        ids = np.fromiter(map(self.index.get, pieces, repeat(-1)), dtype=np.int64, count=len(pieces))
        bad = ids < 0
        if bad.any():
            if unknown != "replace":
                raise _unknown_error(what, "word(s)", {p for p, b in zip(pieces, bad) if b})
            ids[bad] = 0
        return ids.astype(self.dtype())

    def ids(self, text: str, unknown: str = "error", what: str = "text") -> np.ndarray:
        return self._ids(WORD.findall(text), unknown, what)

    def scored(self, text: str, unknown: str = "error", what: str = "text", opens: bool = True) -> Scored:
        pieces = WORD.findall(text)
        ids = self._ids(pieces, "replace", what)  # unknown words are charged, never refused
        k = int(opens and bool(pieces))  # the opening token is context, not scored
        extra = sum(self.spelling_nats(p) for p, i in zip(pieces[k:], ids[k:].tolist()) if i == 0)
        return Scored(ids, len(text) - (len(pieces[0]) if k else 0), extra)

    def decode(self, ids) -> str:
        t = self.tokens
        return "".join(t[i] for i in np.asarray(ids, dtype=np.int64).tolist())

    def primer(self) -> np.ndarray:
        return np.array([self.index.get("\n", 1 if len(self) > 1 else 0)], dtype=self.dtype())

    def banned(self, chars: str, unknown: str = "error") -> list[int]:
        s = set(chars)
        return [i for i, t in enumerate(self.tokens) if i and s & set(t)]

    def never(self) -> list[int]:
        return [0]  # <unk> has no spelling to write

    def boundaries(self) -> list[int]:
        return []

    def stream(self):
        return lambda i: self.tokens[i]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokens": self.tokens, "char_counts": self.char_counts, "n_tokens": self.n_tokens,
                "bigrams": self.bigrams}

    @classmethod
    def from_dict(cls, d: dict) -> "WordTokenizer":
        return cls(list(d["tokens"]), {str(k): int(v) for k, v in d["char_counts"].items()}, int(d["n_tokens"]),
                   [[str(a), str(b), int(n)] for a, b, n in d["bigrams"]])


class BPETokenizer(_Ids):
    """Byte-level BPE from Hugging Face `tokenizers`: every text encodes, nothing is unknown."""

    kind = "bpe"
    words_are_tokens = True
    charges_unknown = False  # nothing is unknown to byte-level BPE

    def __init__(self, tok):
        from tokenizers import decoders

        self.tok = tok
        self._len = tok.get_vocab_size()
        self._decoders = decoders

    @classmethod
    def fit(cls, text: str, vocab_size: int) -> "BPETokenizer":
        return cls.fit_pieces([text], vocab_size)

    @classmethod
    def fit_pieces(cls, texts, vocab_size: int) -> "BPETokenizer":
        """Fitted on the concatenation of `texts`, read one at a time."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(cls.batches(texts), trainer)
        return cls(tok)

    @staticmethod
    def batches(texts):
        """The consecutive pieces of one text regrouped as the trainer reads it, 1,000 lines at a time (the trainer
        pre-tokenises each group alone, so a text given in pieces must be grouped as the whole would be)."""
        group, partial = [], ""
        for text in texts:
            lines = (partial + text).splitlines(keepends=True)
            partial = lines.pop() if lines and len((lines[-1] + "x").splitlines()) == 1 else ""
            for line in lines:
                group.append(line)
                if len(group) == 1000:
                    yield "".join(group)
                    group = []
        if partial:
            group.append(partial)
        if group:
            yield "".join(group)

    def __len__(self) -> int:
        return self._len

    # encode_batch_fast: the encoder without the offsets that only `scored` needs; over many texts it runs on every
    # core (the library's own threads). Over 8 MB in 64 KB texts on 2 AMD Zen 3 cores: 2.2-3.1x `encode`, same ids.
    def ids(self, text: str, unknown: str = "error", what: str = "text") -> np.ndarray:
        return self.ids_many([text])

    def ids_many(self, texts: list[str], unknown: str = "error", what: str = "text") -> np.ndarray:
        return self._joined([np.array(e.ids, dtype=self.dtype()) for e in self.tok.encode_batch_fast(texts)])

    def scored(self, text: str, unknown: str = "error", what: str = "text", opens: bool = True) -> Scored:
        enc = self.tok.encode(text)
        # The first token's end, in characters: where a character spans two
        # tokens it counts as unscored, so bpc errs high, never low.
        first = enc.offsets[0][1] if opens and enc.ids else 0
        return Scored(np.array(enc.ids, dtype=self.dtype()), len(text) - first, 0.0)

    def decode(self, ids) -> str:
        return self.tok.decode(np.asarray(ids, dtype=np.int64).tolist(), skip_special_tokens=False)

    def primer(self) -> np.ndarray:
        return self.ids("\n")

    def banned(self, chars: str, unknown: str = "error") -> list[int]:
        s = set(chars)
        return [i for i in range(len(self)) if s & set(self.decode([i]))]

    def never(self) -> list[int]:
        return []

    def boundaries(self) -> list[int]:
        return []

    def stream(self):
        """id -> text: bytes of a character split over tokens come out once it is whole."""
        ds = self._decoders.DecodeStream(skip_special_tokens=False)
        return lambda i: ds.step(self.tok, int(i)) or ""

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer": self.tok.to_str()}

    @classmethod
    def from_dict(cls, d: dict) -> "BPETokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(d["tokenizer"]))


Tokenizer = CharTokenizer | WordTokenizer | BPETokenizer
KINDS = {c.kind: c for c in (CharTokenizer, WordTokenizer, BPETokenizer)}


def fit(text: str, level: str = "char", vocab_size: int = 0, max_vocab: int = 0, min_count: int = 1) -> Tokenizer:
    if level == "word":
        return WordTokenizer.fit(text, max_vocab, min_count)
    if level == "bpe":
        return BPETokenizer.fit(text, vocab_size)
    return CharTokenizer.fit(text)


def fit_pieces(texts, level: str, vocab_size: int = 0, max_vocab: int = 0, min_count: int = 1) -> Tokenizer:
    """The word or BPE vocabulary `fit` would give the concatenation of `texts` (consecutive pieces, read once, one
    at a time): what `storyloom prepare` fits BPE with on a file larger than memory. (Character and word level
    count their pieces in parallel there, word level adding up WordTokenizer.counts as this does in order.)"""
    if level == "word":
        return WordTokenizer.fit_pieces(texts, max_vocab, min_count)
    if level == "bpe":
        return BPETokenizer.fit_pieces(texts, vocab_size)
    raise ValueError(f"fit_pieces fits word or bpe, not {level!r}")


def from_dict(d: dict) -> Tokenizer:
    """A saved vocabulary; ValueError, KeyError or TypeError if it is not one."""
    if not isinstance(d, dict) or d.get("kind") not in KINDS:
        raise ValueError(f"unknown tokenizer kind {d.get('kind') if isinstance(d, dict) else d!r}")
    try:
        return KINDS[d["kind"]].from_dict(d)
    except Exception as e:  # tokenizers raises its own exception type on a damaged JSON
        if isinstance(e, (KeyError, TypeError, ValueError)):
            raise
        raise ValueError(str(e).splitlines()[0]) from None
