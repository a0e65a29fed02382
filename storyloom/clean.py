"""Raw text -> what the model sees.

Project Gutenberg boilerplate goes (headers, footers, licence, the
"Produced by" credit), a BOM goes, newlines become LF, Unicode becomes NFC,
and case is folded on request. Hand-written because no maintained library
strips both the modern markers and the older ones: the rules are few.
"""

from __future__ import annotations

import re
import unicodedata

_FLAGS = re.IGNORECASE | re.MULTILINE
# The body starts after the last of these lines near the top.
_START = re.compile(
    r"^.*(\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG|\*END\*THE SMALL PRINT|\*\*\*\s*START\*\*THE SMALL PRINT).*$",
    _FLAGS,
)
# The body ends before the first of these lines after the start.
_END = re.compile(
    r"^.*(\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG"
    r"|END OF (THE )?PROJECT GUTENBERG'?S?\b"
    r"|\*\*\*START\*\*THE SMALL PRINT).*$",
    _FLAGS,
)
_PRODUCED = re.compile(r"^\s*(produced by|this e-?(book|text) was produced by)\b", re.IGNORECASE)


def strip_gutenberg(text: str) -> str:
    start = 0
    for m in _START.finditer(text):
        # Markers only count in the front matter; a play may quote the words later.
        if m.start() > len(text) // 2:
            break
        start = m.end() + 1
    end_m = _END.search(text, start)
    body = text[start : end_m.start() if end_m else len(text)]
    return _drop_credit(body) if start else body


def _drop_credit(body: str) -> str:
    """Remove a "Produced by ..." paragraph among the first lines of the body."""
    paragraphs = re.split(r"(\n\s*\n)", body.lstrip("\n"))
    # paragraphs alternates text and separators; look at the first two texts.
    for i in (0, 2):
        if i < len(paragraphs) and _PRODUCED.match(paragraphs[i]):
            del paragraphs[i : i + 2]
            break
    return "".join(paragraphs)


def normalize(text: str) -> str:
    text = text.removeprefix("\ufeff")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return unicodedata.normalize("NFC", text)


def clean(text: str, lowercase: bool = False) -> str:
    text = strip_gutenberg(normalize(text))
    return text.lower() if lowercase else text
