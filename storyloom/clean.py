"""Raw text -> what the model sees.

Project Gutenberg boilerplate goes (headers, footers, licence, the
"Produced by" credit), a BOM goes, newlines become LF, control characters
other than newline and tab go (DOS's end-of-file mark \x1a, form feeds),
Unicode becomes NFC, and case is folded on request. Hand-written because no maintained library
strips both the modern markers and the older ones: the rules are few.
"""

from __future__ import annotations

import re
import unicodedata

# Marker lines, matched anywhere in a line, case-insensitively (a marker
# never spans lines: [^\S\n] is whitespace other than a newline). The
# patterns carry no `^.*` prefix: that form tried a match at every line
# start and ran at ~30 MB/s; the bare patterns are found first and widened
# to their line (`_line`), which gives the same lines at GB/s.
_START = re.compile(
    r"\*\*\*[^\S\n]*START OF (THE|THIS) PROJECT GUTENBERG|\*END\*THE SMALL PRINT|\*\*\*[^\S\n]*START\*\*THE SMALL PRINT",
    re.IGNORECASE,
)
_END = re.compile(
    r"\*\*\*[^\S\n]*END OF (THE|THIS) PROJECT GUTENBERG"
    r"|END OF (THE )?PROJECT GUTENBERG'?S?\b"
    r"|\*\*\*START\*\*THE SMALL PRINT",
    re.IGNORECASE,
)
# Every end marker holds one of these; looking for them in the text's UTF-8
# bytes, lowered (ASCII letters only, so offsets hold), runs at memory
# speed, where any case-insensitive regex over the whole text crawls.
_END_HINTS = (b"nberg", b"l print")
_PRODUCED = re.compile(r"^\s*(produced by|this e-?(book|text) was produced by)\b", re.IGNORECASE)


def _line(text: str, i: int) -> tuple[int, int]:
    """The line around position i: [start, end), end at its newline (or the text's end)."""
    end = text.find("\n", i)
    return text.rfind("\n", 0, i) + 1, len(text) if end < 0 else end


def _end_line(text: str, start: int) -> int | None:
    """Where the first line at or after `start` holding an end marker begins."""
    raw = text.encode("utf-8", "surrogatepass").lower()
    same = text.isascii()  # then byte offsets are character offsets
    pos = start if same else len(text[:start].encode("utf-8", "surrogatepass"))
    hits = {h: raw.find(h, pos) for h in _END_HINTS}
    while any(i >= 0 for i in hits.values()):
        i = min(i for i in hits.values() if i >= 0)
        a, b = max(raw.rfind(b"\n", 0, i) + 1, pos), raw.find(b"\n", i)
        b = len(raw) if b < 0 else b
        if _END.search(raw[a:b].decode("utf-8", "surrogatepass")):
            return a if same else len(raw[:a].decode("utf-8", "surrogatepass"))
        hits = {h: raw.find(h, b) if 0 <= j <= b else j for h, j in hits.items()}
    return None


def start_lines(text: str) -> list[tuple[int, int]]:
    """[start, end) of every line holding a start marker, in order."""
    return [_line(text, m.start()) for m in _START.finditer(text)]


def body_start(lines: list[tuple[int, int]], n: int) -> int:
    """Where the body of a text of n characters starts: after the last start-marker line in its front
    half (a play may quote the words later), else at 0."""
    start = 0
    for a, b in lines:
        if a > n // 2:
            break
        start = b + 1
    return start


def end_lines(text: str) -> list[int]:
    """Where every line holding an end marker begins, in order."""
    found, pos = [], 0
    while (at := _end_line(text, pos)) is not None:
        found.append(at)
        nl = text.find("\n", at)
        if nl < 0:
            break
        pos = nl + 1
    return found


def body_spans(text: str) -> list[tuple[int, int]]:
    """[start, end) of each stretch of a normalised text that strip_gutenberg keeps, in order."""
    # The body starts after the last start-marker line in the front half, and ends before the first
    # end-marker line after it. prepared.py applies the same rules to a file read in pieces.
    start = body_start(start_lines(text), len(text))
    end = _end_line(text, start)
    end = len(text) if end is None else end
    return kept(start, end, text[start:end] if start else "")


def kept(start: int, end: int, opening: str) -> list[tuple[int, int]]:
    """The stretches kept of a text whose body is [start, end): all of it when no start marker was found (start 0),
    else without the newlines that open it and a "Produced by" paragraph (credit_span), which `opening` decides:
    the body's text, or as much of its start as opening_is_whole asks."""
    spans = [(start, end)]
    if start:
        lead, span = credit_span(opening)
        s0 = start + lead
        spans = [(s0, end)] if span is None else [(s0, s0 + span[0]), (s0 + span[1], end)]
    return [(a, b) for a, b in spans if b > a]


def strip_gutenberg(text: str) -> str:
    return "".join(text[a:b] for a, b in body_spans(text))


_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def opening_is_whole(opening: str) -> bool:
    """Whether this opening of a body decides credit_span as the whole body would: its first two paragraph
    breaks are in it, the second followed by text."""
    stripped = opening.lstrip("\n")
    breaks = _PARAGRAPH_BREAK.finditer(stripped)
    second = next(breaks, None) and next(breaks, None)
    return second is not None and bool(stripped[second.end() :].strip())


def credit_span(body: str) -> tuple[int, tuple[int, int] | None]:
    """The newlines that open a body (dropped), and the [start, end) of a "Produced by ..." paragraph among the
    first two paragraphs after them (dropped with the break that follows it), in the body without those newlines."""
    stripped = body.lstrip("\n")
    start = 0
    breaks = _PARAGRAPH_BREAK.finditer(stripped)  # lazily: only the first two breaks are ever needed
    for _ in range(2):
        brk = next(breaks, None)
        end = len(stripped) if brk is None else brk.start()
        if _PRODUCED.match(stripped, start, end):
            return len(body) - len(stripped), (start, len(stripped) if brk is None else brk.end())
        if brk is None:
            break
        start = brk.end()
    return len(body) - len(stripped), None


# Control characters other than newline and tab: old Gutenberg files end with DOS's end-of-file mark \x1a, some
# hold form feeds or stray NULs. None is writing; each would be a character the model must learn.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# An ASCII text's bytes with every byte but those controls deleted: what is left is the controls it holds.
# bytes.translate does that 5x faster than the regex searches (17 against 89 ms for 14 MB on an AMD EPYC, where
# the search was half of `prepare`'s time).
_NOT_CONTROL = bytes(b for b in range(128) if not (b <= 0x08 or 0x0B <= b <= 0x1F or b == 0x7F))


def _has_control(text: str) -> bool:
    if text.isascii():
        return bool(text.encode("ascii").translate(None, _NOT_CONTROL))
    return _CONTROL.search(text) is not None


def normalize(text: str, first: bool = True) -> str:
    """BOM (at the text's start: `first`), newlines, control characters and NFC; safe on pieces split after a newline."""
    if first:
        text = text.removeprefix("\ufeff")
    if "\r" in text:  # a search is ~4x faster than the two replaces that are usually no-ops
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _has_control(text):  # a search first: most texts have none
        text = _CONTROL.sub("", text)
    return unicodedata.normalize("NFC", text)


def clean(text: str, lowercase: bool = False) -> str:
    text = strip_gutenberg(normalize(text))
    return text.lower() if lowercase else text
