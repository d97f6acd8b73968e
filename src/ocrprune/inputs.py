"""Expand what the user typed into an ordered, de-duplicated list of documents.

Guarantees:

* Arguments may be files, folders (searched recursively), quoted globs (`"docs/**/*.pdf"`, expanded
  only when the argument does not exist as a path), `@list.txt` (one path per line, relative to the
  list's folder) and `-` (one path per line from a text stream). In lists and streams, surrounding
  whitespace is stripped and blank lines and lines starting with `#` are skipped.
* The type comes from the bytes (`sniff_kind`), never from the extension.
* A bad explicitly named input (missing, empty, not a document, a folder without documents) does
  not stop the batch: it comes back as an `InputError` next to the good documents. Inside folders,
  a file named like a document (`.pdf`, `.png`, `.jpg`, ...) that is not one is reported too; other
  non-documents (`.md`, `.json`, ...), hidden entries (`.name`) and non-regular files are skipped
  silently.
* Each real file appears once (symlinks and repeated arguments collapse), in order of first
  appearance; a folder's files come in sorted order.
* `Document.rel` is a safe output path without extension: it never contains `..`, never starts with
  `/`, and no two documents share it, even ignoring case (see `expand_inputs` for the rule).
"""

from __future__ import annotations

import fnmatch
import glob as globlib
import os
import re
import stat
import sys
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, TextIO

from ocrprune.errors import InputError

DocKind = Literal["pdf", "image"]

SNIFF_BYTES = 1024
MAX_COMPONENT_BYTES = 120
_BMP_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}
_GLOB_MAGIC = re.compile(r"[*?\[]")
_SAFE_PUNCTUATION = frozenset(" ._()-+,@")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul"} | {
    f"{p}{i}" for p in ("com", "lpt") for i in range(1, 10)
}


# Extensions that promise a document: a file inside a folder with one of these that does not sniff
# as a document is reported, not skipped.
DOCUMENT_SUFFIXES = frozenset(
    {".pdf", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".jp2", ".jfif"}
)


@dataclass(frozen=True)
class Document:
    """One input document: `path` is absolute (not symlink-resolved), `display` is what the user
    typed or what was found, `rel` is its output path relative to `--out`, without extension."""

    path: Path
    display: str
    rel: PurePosixPath
    kind: DocKind


def sniff_kind(path: Path) -> DocKind | None:
    """ "pdf" or "image" from the first bytes of `path`, or None; OSError if it cannot be read.

    PDF: `%PDF-` anywhere in the first 1024 bytes (the spec allows junk before the header).
    Images: PNG, JPEG, TIFF (incl. BigTIFF), WebP, GIF, BMP (with a plausible DIB header size).
    """
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    return _kind_from_bytes(head)


def _kind_from_bytes(head: bytes) -> DocKind | None:
    if head.startswith(b"%PDF-"):
        return "pdf"
    if (
        head.startswith(b"\x89PNG\r\n\x1a\n")
        or head.startswith(b"\xff\xd8\xff")
        or head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
        or head[:6] in (b"GIF87a", b"GIF89a")
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
    ):
        return "image"
    if b"%PDF-" in head:
        return "pdf"
    if head[:2] == b"BM" and len(head) >= 18:
        if int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
            return "image"
    return None


@dataclass(frozen=True)
class _Found:
    """A document found while expanding, before it is named."""

    path: Path
    display: str
    kind: DocKind
    folder: Path | None  # the folder argument it was found in, or None for a file argument


class _Expander:
    def __init__(self, glob: str | None, stdin: TextIO | None) -> None:
        self.glob = glob.casefold() if glob else None
        self.stdin = stdin
        self.found: list[_Found] = []
        self.errors: list[InputError] = []
        self._seen: set[str] = set()
        self._reported: set[tuple[str, str]] = set()

    def argument(self, text: str, base: Path | None = None) -> None:
        """Expand one argument; `base` is the folder relative paths start from (None: cwd)."""
        if text == "-" and base is None:
            self.lines(self.stdin if self.stdin is not None else sys.stdin, None)
            return
        if text.startswith("@") and len(text) > 1 and base is None:
            listed = Path(text[1:])
            if listed.is_file() or not Path(text).exists():
                self.list_file(text, listed)
                return
        path = Path(text) if base is None or os.path.isabs(text) else base / text
        display = text if base is None else str(path)
        if path.exists():
            self.path(path, display, explicit=True)
        elif _GLOB_MAGIC.search(text):
            self.pattern(text, base, display)
        elif os.path.lexists(path):
            self.error(display, "missing", "broken symbolic link")
        else:
            self.error(display, "missing", "no such file or folder")

    def list_file(self, display: str, listed: Path) -> None:
        try:
            with open(listed, encoding="utf-8", errors="surrogateescape") as fh:
                self.lines(fh, listed.parent)
        except FileNotFoundError:
            self.error(display, "missing", "list file not found")
        except OSError as exc:
            self.error(display, "unreadable", f"cannot read list file: {exc.strerror or exc}")

    def lines(self, stream: Iterable[str], base: Path | None) -> None:
        for line in stream:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                self.argument(entry, base if base is not None else Path("."))

    def pattern(self, text: str, base: Path | None, display: str) -> None:
        if base is None or os.path.isabs(text):
            matches = sorted(globlib.glob(text, recursive=True))
        else:
            matches = [
                str(base / m) for m in sorted(globlib.glob(text, root_dir=base, recursive=True))
            ]
        if sum(self.path(Path(match), match, explicit=False) for match in matches) == 0:
            self.error(display, "missing", "no documents match this pattern")

    def path(self, path: Path, display: str, *, explicit: bool) -> int:
        """Add a file or folder; return how many documents it holds (duplicates included)."""
        if path.is_dir():
            return self.folder(path, display, explicit=explicit)
        try:
            mode = path.stat().st_mode
            if not stat.S_ISREG(mode):
                if explicit:
                    self.error(display, "not_a_document", "not a regular file")
                return 0
            kind = sniff_kind(path)
            empty = kind is None and path.stat().st_size == 0
        except OSError as exc:
            self.error(display, "unreadable", exc.strerror or str(exc))
            return 0
        if kind is not None:
            self.add(path, display, kind, None)
            return 1
        if explicit and empty:
            self.error(display, "empty", "the file is empty (0 bytes)")
        elif explicit:
            self.error(display, "not_a_document", "not a PDF or a supported image (by content)")
        return 0

    def folder(self, folder: Path, display: str, *, explicit: bool) -> int:
        count = 0
        for rel in _walk(folder, lambda exc: self.unreadable(exc, folder, display)):
            if self.glob and not fnmatch.fnmatchcase(rel.name.casefold(), self.glob):
                continue
            path = folder.joinpath(*rel.parts)
            try:
                if not stat.S_ISREG(path.stat().st_mode):
                    continue
                kind = sniff_kind(path)
            except OSError as exc:
                self.error(
                    os.path.join(display, *rel.parts), "unreadable", exc.strerror or str(exc)
                )
                continue
            shown = os.path.join(display, *rel.parts)
            if kind is not None:
                self.add(path, shown, kind, folder)
                count += 1
            elif rel.suffix.lower() in DOCUMENT_SUFFIXES:
                # Named like a document but not one: say so rather than skip it silently.
                if path.stat().st_size == 0:
                    self.error(shown, "empty", "the file is empty (0 bytes)")
                else:
                    self.error(shown, "not_a_document", "not a PDF or a supported image (by content)")
        if count == 0 and explicit and not any(e.path == display for e in self.errors):
            what = f"documents matching {self.glob!r}" if self.glob else "PDF or image files"
            self.error(display, "empty", f"folder contains no {what}")
        return count

    def unreadable(self, exc: OSError, folder: Path, display: str) -> None:
        where = os.path.relpath(exc.filename, folder) if exc.filename else "."
        self.error(
            os.path.normpath(os.path.join(display, where)), "unreadable", exc.strerror or str(exc)
        )

    def add(self, path: Path, display: str, kind: DocKind, folder: Path | None) -> None:
        real = os.path.realpath(path)
        if real in self._seen:
            return
        self._seen.add(real)
        self.found.append(_Found(path.absolute(), display, kind, folder))

    def error(self, display: str, kind: str, detail: str) -> None:
        if (display, kind) not in self._reported:
            self._reported.add((display, kind))
            self.errors.append(InputError(display, kind, detail))


def _walk(folder: Path, onerror: Callable[[OSError], None]) -> list[PurePosixPath]:
    """Files under `folder` (not following symlinked folders, skipping hidden entries), sorted."""
    found: list[PurePosixPath] = []
    for root, dirs, files in os.walk(folder, onerror=onerror):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        inner = PurePosixPath(*Path(os.path.relpath(root, folder)).parts)
        found.extend(inner / name for name in files if not name.startswith("."))
    return sorted(found, key=lambda p: p.parts)


def sanitize_component(name: str) -> str:
    """Make one path component safe: NFC, letters/marks/digits and ` ._()-+,@` kept, anything else
    (separators, control characters, `..`) replaced by `_`, at most 120 UTF-8 bytes."""
    name = unicodedata.normalize("NFC", name)
    chars = [
        c if unicodedata.category(c)[0] in "LMN" or c in _SAFE_PUNCTUATION else "_" for c in name
    ]
    text = "".join(chars).strip().rstrip(".").strip()
    if text.startswith("."):
        text = "_" + text[1:]
    if not text:
        text = "_"
    if text.split(".")[0].casefold() in _WINDOWS_RESERVED:
        text = "_" + text
    return _truncate(text, MAX_COMPONENT_BYTES)


def _truncate(text: str, limit: int) -> str:
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore").rstrip(" .") or "_"


def _stem_rel(parts: Sequence[str]) -> PurePosixPath:
    """Sanitized components, the last one without its extension (`a.b.c.jpg` -> `a.b.c`)."""
    *dirs, name = parts
    return PurePosixPath(
        *(sanitize_component(p) for p in dirs), sanitize_component(Path(name).stem)
    )


def _lexical(path: Path) -> str:
    return os.path.normpath(str(path))


def _name_all(found: list[_Found]) -> list[PurePosixPath]:
    """The natural `rel` of each document (before collisions are resolved)."""
    parents = [os.path.dirname(_lexical(f.path)) for f in found if f.folder is None]
    common = os.path.commonpath(parents) if parents else ""
    rels: list[PurePosixPath] = []
    for f in found:
        if f.folder is None:
            parts = Path(os.path.relpath(_lexical(f.path), common)).parts
        else:
            top = Path(_lexical(f.folder.absolute())).name or "_"
            inner = Path(os.path.relpath(_lexical(f.path), _lexical(f.folder.absolute()))).parts
            parts = (top, *inner)
        rels.append(_stem_rel([p for p in parts if p not in ("", ".", "..")] or ["_"]))
    return rels


def _with_suffix(rel: PurePosixPath, suffix: str) -> PurePosixPath:
    head = _truncate(rel.name, MAX_COMPONENT_BYTES - len(suffix.encode("utf-8")))
    return rel.with_name(head + suffix)


def _key(rel: PurePosixPath) -> str:
    return str(rel).casefold()


def _disambiguate(found: list[_Found], rels: list[PurePosixPath]) -> list[PurePosixPath]:
    natural = {_key(r) for r in rels}
    taken: dict[str, set[str]] = {}  # key -> extensions of the documents already named there
    result: list[PurePosixPath] = []
    for f, rel in zip(found, rels, strict=True):
        ext = f.path.suffix.lower().lstrip(".")
        key = _key(rel)
        if key not in taken:
            taken[key] = {ext}
            result.append(rel)
            continue
        candidates: list[PurePosixPath] = []
        if ext and ext not in taken[key]:
            candidates.append(_with_suffix(rel, "_" + sanitize_component(ext)))
        n = 2
        while True:
            candidates.append(_with_suffix(rel, f"_{n}"))
            chosen = next(
                (c for c in candidates if _key(c) not in taken and _key(c) not in natural), None
            )
            if chosen is not None:
                break
            candidates.clear()
            n += 1
        taken[key].add(ext)
        taken[_key(chosen)] = {ext}
        result.append(chosen)
    return result


def fallback_rel(rel: PurePosixPath, source_path: str) -> PurePosixPath:  # TEMP until naming merge
    import hashlib

    digest = hashlib.sha256(os.fsencode(source_path)).hexdigest()[:8]
    return rel.with_name(f"{rel.name}~{digest}")


def expand_inputs(
    args: Sequence[str], *, glob: str | None = None, stdin: TextIO | None = None,
    base: object = None, out: object = None, null: bool = False,
) -> tuple[list[Document], list[InputError]]:
    """Expand command-line inputs into documents and per-input problems.

    `glob` filters files found inside folders by name, case-insensitively (`*.pdf` matches
    `X.PDF`). `stdin` is the stream `-` reads (default `sys.stdin`).

    Output naming (`Document.rel`, no extension; writers add `.md`/`.json`):

    * a file inside a folder argument: the folder's name / path inside the folder;
    * a file argument (also from `-`, `@list` or a quoted glob): its path relative to the common
      parent folder of all file arguments, so one file gives just its stem and `a/report.pdf`
      `b/report.pdf` give `a/report` and `b/report`; `..` and absolute paths cannot escape;
    * every component is sanitized (`sanitize_component`) and the last loses only its final
      extension (`a.b.c.jpg` -> `a.b.c`);
    * collisions (compared ignoring case) are resolved in order of appearance: the first document
      keeps the name; a later one gets `_<ext>` if its extension differs from those already named
      there (`x.pdf`, `x.png` -> `x`, `x_png`), else `_2`, `_3`, ... (never a name another
      document has naturally).
    """
    expander = _Expander(glob, stdin)
    for text in args:
        expander.argument(text)
    found = expander.found
    rels = _disambiguate(found, _name_all(found))
    docs = [Document(f.path, f.display, rel, f.kind) for f, rel in zip(found, rels, strict=True)]
    return docs, expander.errors
