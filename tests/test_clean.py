import unicodedata

import pytest

from storyloom.clean import clean, normalize, strip_gutenberg

BODY = "CHAPTER I\n\nIt was a dark night.\nThe end.\n"

HEADERS = [
    "The Project Gutenberg EBook of Foo, by Bar\n\nThis eBook is for the use of anyone anywhere\n\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK FOO ***\n\n\n",
    "Project Gutenberg's Foo\n\n*** START OF THE PROJECT GUTENBERG EBOOK FOO ***\n",
    "***The Project Gutenberg's Etext of Foo***\n...legal...\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n",
    "*** START OF THE PROJECT GUTENBERG EBOOK FOO ***\n\nProduced by Jane Doe, John Roe and the Online\nDistributed Proofreading Team\n\n\n\n",
    "*** START OF THE PROJECT GUTENBERG EBOOK FOO ***\nProduced by David Widger\n\n",
]
FOOTERS = [
    "\n*** END OF THIS PROJECT GUTENBERG EBOOK FOO ***\n\nUpdated editions will replace the previous one\n",
    "\n*** END OF THE PROJECT GUTENBERG EBOOK FOO ***\n*** licence ***\n",
    "\nEnd of the Project Gutenberg EBook of Foo, by Bar\n\n*** END OF THIS PROJECT GUTENBERG EBOOK FOO ***\nlicence\n",
    "\nEnd of Project Gutenberg's Foo, by Bar\n\nlicence text\n",
    "\nEnd of The Project Gutenberg Etext of Foo\n",
]


@pytest.mark.parametrize("header", HEADERS)
@pytest.mark.parametrize("footer", FOOTERS)
def test_strips_each_header_and_footer_variant(header, footer):
    assert strip_gutenberg(header + BODY + footer).strip() == BODY.strip()


def test_text_without_markers_is_untouched():
    text = "Produced by the players.\nEnd of the scene.\n"
    assert strip_gutenberg(text) == text


def test_marker_words_late_in_a_body_are_not_a_header():
    body = "x\n" * 500 + "*** START OF THE PROJECT GUTENBERG EBOOK quoted ***\n" + "y\n"
    assert strip_gutenberg(body) == body


def test_bom_newlines_and_nfc():
    raw = "\ufeffcafe\u0301\r\nline two\rline three\n"
    assert normalize(raw) == "caf\u00e9\nline two\nline three\n"


@pytest.mark.parametrize("tail", ["", "\u00e9"], ids=["ascii", "not-ascii"])  # a fast path for ASCII texts, a regex else
def test_every_control_character_goes_and_every_other_stays(tail):
    for cp in range(0x180):
        c = chr(cp)
        want = "" if (cp <= 0x08 or 0x0B <= cp <= 0x1F or 0x7F <= cp <= 0x9F) and c != "\r" else c
        if c == "\r":
            want = "\n"
        assert normalize(f"a{c}b{tail}", first=False) == unicodedata.normalize("NFC", f"a{want}b{tail}"), hex(cp)


def test_control_characters_go_but_newlines_and_tabs_stay():
    # an old Gutenberg file: DOS line ends, a form feed between chapters, the DOS end-of-file mark
    raw = "CHAPTER I\r\n\tIt was\x00 dark.\r\n\x0cCHAPTER II\r\nThe end.\r\n\x1a"
    assert normalize(raw) == "CHAPTER I\n\tIt was dark.\nCHAPTER II\nThe end.\n"
    assert normalize("caf\x85e\u0301") == "caf\u00e9"  # a C1 control between a letter and its accent


def test_lowercase_is_optional():
    assert clean("Once Upon A Time") == "Once Upon A Time"
    assert clean("Once Upon A Time", lowercase=True) == "once upon a time"


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.text(), st.booleans())
def test_fuzz_cleaning_any_unicode_never_fails_and_is_stable(text, lowercase):
    out = clean(text, lowercase)
    assert isinstance(out, str) and "\r" not in out
    assert normalize(out) == out  # what the model sees is already normal


# The first implementation, kept as the oracle for the fast one: `^.*(marker).*$`
# per line, which reads easily and crawls (about 30 MB/s).
_FLAGS = __import__("re").IGNORECASE | __import__("re").MULTILINE
_ORACLE_START = __import__("re").compile(
    r"^.*(\*\*\*[^\S\n]*START OF (THE|THIS) PROJECT GUTENBERG|\*END\*THE SMALL PRINT|\*\*\*[^\S\n]*START\*\*THE SMALL PRINT).*$", _FLAGS)
_ORACLE_END = __import__("re").compile(
    r"^.*(\*\*\*[^\S\n]*END OF (THE|THIS) PROJECT GUTENBERG|END OF (THE )?PROJECT GUTENBERG'?S?\b|\*\*\*START\*\*THE SMALL PRINT).*$",
    _FLAGS)


def _drop_credit(body: str) -> str:
    from storyloom.clean import credit_span

    lead, span = credit_span(body)
    body = body[lead:]
    return body if span is None else body[: span[0]] + body[span[1] :]


def oracle_strip(text: str) -> str:
    start = 0
    for m in _ORACLE_START.finditer(text):
        if m.start() > len(text) // 2:
            break
        start = m.end() + 1
    end_m = _ORACLE_END.search(text, start)
    body = text[start : end_m.start() if end_m else len(text)]
    return _drop_credit(body) if start else body


PIECES = [h for h in HEADERS] + [f for f in FOOTERS] + [
    "*** start of the project gutenberg x", "END OF PROJECT GUTENBERG", "end of the project gutenbergs", "nberg", "l print",
    "Small Print", "*END*THE SMALL PRINT", "***START**THE SMALL PRINT", "\n", "\n\n", " ", "Produced by X\n\n", "é—",
    "END OF THE PROJECT GUTENBERGX", "GUTENBERG'S", "\u0130", "\u017f",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=12)), max_size=16))
def test_fast_strip_equals_the_line_regex_oracle(parts):
    text = "".join(parts)
    assert strip_gutenberg(text) == oracle_strip(text)
