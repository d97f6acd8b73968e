"""Expand what the user typed into an ordered, de-duplicated list of documents, each with a stable
output name.

Guarantees:

* Arguments may be files, folders (searched recursively), quoted globs (`"docs/**/*.pdf"`, expanded
  only when the argument does not exist as a path), `@list.txt` (one path per line, relative to the
  list's folder) and `-` (paths from stdin, relative to the current folder: one per line, or
  NUL-separated with `null=True` as `find -print0` writes them). In line lists, surrounding ASCII
  whitespace is stripped (so CRLF line ends work), a leading UTF-8 byte-order mark is dropped,
  and blank lines and lines starting with `#` are skipped; NUL lists are
  taken as they are (names may hold spaces and newlines), only empty entries are skipped. Lists are
  read as bytes and decoded with `os.fsdecode`, so names that are not UTF-8 survive.
* The type comes from the bytes (`sniff_kind`), never from the extension. Nothing but a regular
  file is ever opened: a FIFO or device is seen by `stat` (and again by `fstat` on a non-blocking
  open) and never read, so it cannot hang the listing.
* A bad input costs that input only: a path that does not exist (`missing`), an explicitly named
  file that is not a document (`not_a_document`, `empty`), or anything that fails while listing
  (`unreadable`: permission denied, removed mid-walk) comes back as an `InputError` next to the good
  documents; `expand_inputs` never raises for one input. Inside folders, a file named like a document
  (`.pdf`, `.png`, ...) that is not one is reported too; other non-documents, hidden entries
  (`.name`) and non-regular files are skipped silently.
* Nothing to do is not an error: an existing folder without documents, a glob whose folder exists
  but matches nothing, an empty `@list` or an empty stdin list give no documents and no problems.
* Each real file appears once, in order of first appearance (repeats and symlinks collapse by real
  path); a folder's files come in sorted order.
* The output folder is never read as input. While walking folders and matching globs, a folder that
  is `--out` (same file) or holds the `OUTPUT_MARKER` file that the writer leaves in every output
  folder is not entered. When the folder being converted is itself an output folder or lies inside
  one (`convert . --out .`, `convert inbox --out .`), it is walked, but ocrprune's figure folders
  (`*_images`) in it are skipped. A file named explicitly (argument, `@list`, stdin) is always
  converted, wherever it lies.

Output names (`Document.rel`, a relative POSIX path; the writers append `.md`, `.json`, `_images`):

* It depends only on the input's own path and the fixed `base` folder (default: the current
  folder), never on the other inputs of the run: the path is made absolute and normalised
  lexically (`os.path.normpath`, symlinked folders kept as typed) and taken relative to `base`, with
  the full file name kept: `inbox/2024/a.bmp` -> `inbox/2024/a.bmp` -> `out/inbox/2024/a.bmp.md`.
  Files found in folders are named the same way. A file that is itself a symlink is named after its
  target (its real path), so a symlink and its target are one document under the target's name.
* A path outside `base` (absolute elsewhere, or `..` escaping it) maps to `_outside/` followed by
  its absolute path's components: `/data/x.pdf` with base `/home/u` -> `_outside/data/x.pdf`.
  (If the lexical path is outside but its folders' real path is inside `base`, the real path is
  used.)
* Each component is kept as is when already safe: `sanitize_component(c) == c`, not a Windows
  device name, not starting with `.`, and short enough (folders 120 UTF-8 bytes, the file name
  `MAX_NAME_BYTES` so that the longest writer suffix still fits in 120). Otherwise it becomes
  `sanitize_component(c)` (truncated if needed) + `~` + the first 8 hex digits of the SHA-256 of
  the component's bytes (`os.fsencode(c)`, lossless for non-UTF-8 names). `~` never survives
  sanitizing, so a hashed name never equals a kept one: distinct paths get distinct names (up to a
  32-bit hash collision).
* At the top of the output folder, the names the tool writes itself (`RESERVED_TOP_LEVEL`:
  `report.json`, `pages.csv`, `.ocrprune`, and `_outside` for the rule above) are hashed as folder
  names, and so are their stems as document names (a document named `report` would write
  `report.json`; `pages` is kept free too).
* Collisions that no per-path rule can prevent are resolved in the run, deterministically for the
  same set of inputs: two names equal when casefolded (`A.pdf`, `a.pdf`, which collide on macOS and
  Windows): the later one in order of appearance gets `fallback_rel`; a document whose `.md` or
  `.json` would be a folder another document's outputs need (`x` beside `x.md/a.pdf`) gets
  `fallback_rel` whatever the order. The writer calls `fallback_rel` too when it finds a target
  taken on disk by another source or by a folder.
"""

from __future__ import annotations

import errno
import fnmatch
import glob as globlib
import hashlib
import os
import re
import stat
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

from ocrprune.errors import InputError

DocKind = Literal["pdf", "image"]

SNIFF_BYTES = 1024
MAX_COMPONENT_BYTES = 120
# What the writers append to a document's name; the file name leaves room for the longest.
OUTPUT_SUFFIXES = (".md", ".json", "_images")
MAX_NAME_BYTES = MAX_COMPONENT_BYTES - max(len(s) for s in OUTPUT_SUFFIXES)
# The writer creates this file in every output folder; a folder holding it is never walked as input.
OUTPUT_MARKER = PurePosixPath(".ocrprune/OUTPUT_ROOT")
OUTSIDE = "_outside"
# Names the tool itself writes at the top of the output folder (compared casefolded).
RESERVED_TOP_LEVEL = frozenset({"report.json", "pages.csv", ".ocrprune", OUTSIDE})
_RESERVED_TOP_STEMS = frozenset(PurePosixPath(n).stem for n in RESERVED_TOP_LEVEL)
_FIGURE_FOLDER_SUFFIX = "_images"
_BMP_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}
_GLOB_MAGIC = re.compile(r"[*?\[]")
_SAFE_PUNCTUATION = frozenset(" ._()-+,@")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul"} | {
    f"{p}{i}" for p in ("com", "lpt") for i in range(1, 10)
}
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)

# Extensions that promise a document: a file inside a folder with one of these that does not sniff
# as a document is reported, not skipped.
DOCUMENT_SUFFIXES = frozenset(
    {".pdf", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".jp2", ".jfif"}
)


@dataclass(frozen=True)
class Document:
    """One input document: `path` is absolute (not symlink-resolved), `display` is what the user
    typed or what was found, `rel` is its output path relative to `--out` (full file name kept;
    the writers append `.md`, `.json`, `_images`)."""

    path: Path
    display: str
    rel: PurePosixPath
    kind: DocKind


class NotRegularFileError(OSError):
    """The path is not (or no longer) a regular file, so it is not opened for reading."""


# -- sniffing -----------------------------------------------------------------------------------


def sniff_kind(path: Path | str) -> DocKind | None:
    """ "pdf" or "image" from the first bytes of `path`, or None; OSError if it cannot be read,
    `NotRegularFileError` (never a hang) if it is a FIFO, device or folder.

    PDF: `%PDF-` anywhere in the first 1024 bytes (the spec allows junk before the header).
    Images: PNG, JPEG, TIFF (incl. BigTIFF), WebP, GIF, BMP (with a plausible DIB header size).
    """
    return _sniff(path)[0]


def _sniff(path: Path | str) -> tuple[DocKind | None, int]:
    """Kind and size; opened non-blocking and checked with fstat before any read."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFileError(errno.EINVAL, "not a regular file", str(path))
        head = b""
        while len(head) < SNIFF_BYTES:
            chunk = os.read(fd, SNIFF_BYTES - len(head))
            if not chunk:
                break
            head += chunk
    finally:
        os.close(fd)
    return _kind_from_bytes(head), info.st_size


def _kind_from_bytes(head: bytes) -> DocKind | None:
    if head.startswith(b"%PDF-"):
        return "pdf"
    if (
        head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"))
        or head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
        or head[:6] in (b"GIF87a", b"GIF89a")
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
    ):
        return "image"
    if b"%PDF-" in head:
        return "pdf"
    bmp_header = int.from_bytes(head[14:18], "little")
    if head[:2] == b"BM" and len(head) >= 18 and bmp_header in _BMP_HEADER_SIZES:
        return "image"
    return None


# -- naming -------------------------------------------------------------------------------------


def sanitize_component(name: str) -> str:
    """Make one path component safe: NFC, letters/marks/digits and ` ._()-+,@` kept, anything else
    (separators, control characters, `~`, undecodable bytes, `..`) replaced by `_`, no leading dot,
    no Windows device name, at most 120 UTF-8 bytes. Not injective: `safe_component` is."""
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


def _tag(data: bytes) -> str:
    return "~" + hashlib.sha256(data).hexdigest()[:8]


def safe_component(name: str, *, limit: int = MAX_COMPONENT_BYTES, reserved: bool = False) -> str:
    """`name` itself when safe, else its sanitized form + `~` + 8 hex of SHA-256 of its bytes
    (injective: kept names never contain `~`). `reserved` forces the hashed form."""
    kept = (
        not reserved
        and sanitize_component(name) == name
        and not name.startswith(".")
        and name.split(".")[0].casefold() not in _WINDOWS_RESERVED
        and len(name.encode("utf-8")) <= limit
    )
    if kept:
        return name
    tag = _tag(os.fsencode(name))
    return _truncate(sanitize_component(name), limit - len(tag)) + tag


def _safe_parts(parts: Sequence[str], *, top: bool) -> PurePosixPath:
    """Each component made safe; `top`: the first one sits at the top of the output folder."""
    out: list[str] = []
    last = len(parts) - 1
    for i, part in enumerate(parts):
        folded = part.casefold()
        reserved = (
            top
            and i == 0
            and (folded in RESERVED_TOP_LEVEL or (i == last and folded in _RESERVED_TOP_STEMS))
        )
        limit = MAX_NAME_BYTES if i == last else MAX_COMPONENT_BYTES
        out.append(safe_component(part, limit=limit, reserved=reserved))
    return PurePosixPath(*out)


def _lexical(path: str | os.PathLike[str]) -> str:
    return os.path.normpath(os.path.abspath(path))


def _naming_path(path: str | os.PathLike[str]) -> str:
    """The path a document is named after: lexical, or the real path for a symlinked file."""
    lexical = _lexical(path)
    return os.path.realpath(lexical) if os.path.islink(lexical) else lexical


def _bases(base: Path | str | None) -> tuple[str, ...]:
    lexical = _lexical(base if base is not None else os.getcwd())
    real = os.path.realpath(lexical)
    return (lexical,) if real == lexical else (lexical, real)


def _inside(path: str, folder: str) -> bool:
    return path != folder and os.path.commonpath([path, folder]) == folder


def _real_folder(path: str) -> str:
    """`path` with its folders' symlinks resolved, the file name kept."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _candidates(naming: str) -> Iterator[str]:
    yield naming
    yield _real_folder(naming)  # only computed when the lexical path is outside the base


def _rel_from(naming: str, bases: tuple[str, ...]) -> PurePosixPath:
    for candidate in _candidates(naming):
        for base in bases:
            if _inside(candidate, base):
                return _safe_parts(Path(os.path.relpath(candidate, base)).parts, top=True)
    parts = [p for p in Path(naming).parts[1:] if p]  # without the root
    drive = Path(naming).drive  # Windows: keep the drive letter as a folder
    if drive:
        parts.insert(0, drive.rstrip(":\\/") or "_")
    return PurePosixPath(OUTSIDE) / _safe_parts(parts or ["_"], top=False)


def fallback_rel(rel: PurePosixPath, source_path: str) -> PurePosixPath:
    """`rel` with `~` + 8 hex of SHA-256 of the source's absolute path appended to its last
    component: the name to use when `rel`'s targets are taken by another source or a folder."""
    tag = _tag(os.fsencode(_lexical(source_path)))
    return rel.with_name(_truncate(rel.name, MAX_NAME_BYTES - len(tag)) + tag)


def _resolve_collisions(
    rels: Sequence[PurePosixPath], sources: Sequence[str]
) -> list[PurePosixPath]:
    """Casefold-equal names: later ones fall back; a name whose `.md`/`.json` is another
    document's folder falls back whatever the order."""
    folders = {str(p).casefold() for r in rels for p in r.parents if str(p) != "."}
    taken: set[str] = set()
    result: list[PurePosixPath] = []
    for rel, source in zip(rels, sources, strict=True):
        clashes = any(f"{rel}{s}".casefold() in folders for s in (".md", ".json"))
        if clashes or str(rel).casefold() in taken:
            rel = fallback_rel(rel, source)
        taken.add(str(rel).casefold())
        result.append(rel)
    return result


# -- expansion ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    """A document found while expanding, before it is named."""

    path: Path  # absolute, not normalised or resolved
    display: str
    kind: DocKind
    naming: str  # the path its name comes from (`_naming_path`)


class _OutputFolders:
    """Recognises output folders: `--out` itself (same file) or a folder holding `OUTPUT_MARKER`."""

    def __init__(self, out: Path | None) -> None:
        self.out_id: tuple[int, int] | None = None
        for spelling in (out, _lexical(out)) if out is not None else ():
            try:
                info = os.stat(spelling)
            except (OSError, ValueError):
                continue  # not there (yet): nothing can be it
            self.out_id = (info.st_dev, info.st_ino)
            break
        self._cache: dict[str, bool] = {}

    def is_root(self, folder: str) -> bool:
        key = _lexical(folder)
        if key not in self._cache:
            found = os.path.isfile(os.path.join(key, *OUTPUT_MARKER.parts))
            if not found and self.out_id is not None:
                try:
                    info = os.stat(key)
                    found = (info.st_dev, info.st_ino) == self.out_id
                except OSError:
                    pass
            self._cache[key] = found
        return self._cache[key]

    def holds(self, folder: str) -> bool:
        """`folder` is an output folder or lies inside one."""
        current = _lexical(folder)
        while True:
            if self.is_root(current):
                return True
            parent = os.path.dirname(current)
            if parent == current:
                return False
            current = parent


class _Expander:
    def __init__(
        self, glob: str | None, stdin: IO[Any] | None, out: Path | None, null: bool
    ) -> None:
        self.glob = glob.casefold() if glob else None
        self.stdin = stdin
        self.null = null
        self.outputs = _OutputFolders(out)
        self.found: list[_Found] = []
        self.errors: list[InputError] = []
        self._seen: set[str] = set()
        self._reported: set[tuple[str, str]] = set()

    def argument(self, text: str, rel_to: Path | None = None) -> None:
        """Expand one argument; `rel_to` is the folder relative list entries start from."""
        if text == "-" and rel_to is None:
            self.stream()
            return
        if text.startswith("@") and len(text) > 1 and rel_to is None:
            listed = text[1:]
            if os.path.isfile(listed) or not os.path.lexists(text):
                self.list_file(text, Path(listed))
                return
        if "\x00" in text:
            self.error(text, "missing", "the name contains a NUL byte (NUL-separated list: use -0)")
            return
        path = Path(text) if rel_to is None or os.path.isabs(text) else rel_to / text
        display = text if rel_to is None else str(path)
        try:
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            if _GLOB_MAGIC.search(text):
                self.pattern(text, rel_to, display)
            elif os.path.lexists(path):
                self.error(display, "missing", "broken symbolic link")
            else:
                self.error(display, "missing", "no such file or folder")
            return
        except OSError as exc:
            self.os_error(display, exc)
            return
        if stat.S_ISDIR(info.st_mode):
            self.folder(path, display)
        else:
            self.file(path, display, explicit=True, mode=info.st_mode)

    def stream(self) -> None:
        source = self.stdin if self.stdin is not None else sys.stdin
        try:
            data = _read_bytes(source)
        except (OSError, ValueError) as exc:
            self.error("-", "unreadable", f"cannot read the list on stdin: {_reason(exc)}")
            return
        for entry in _entries(data, null=self.null):
            self.argument(entry, Path("."))

    def list_file(self, display: str, listed: Path) -> None:
        try:
            with open(listed, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            self.error(display, "missing", "list file not found")
            return
        except OSError as exc:
            self.error(display, "unreadable", f"cannot read list file: {_reason(exc)}")
            return
        for entry in _entries(data, null=False):
            self.argument(entry, listed.parent)

    def pattern(self, text: str, rel_to: Path | None, display: str) -> None:
        root = _glob_root(text)
        if rel_to is None or os.path.isabs(text):
            matches = sorted(globlib.glob(text, recursive=True))
        else:
            root = os.path.join(rel_to, root)
            matches = [
                os.path.join(rel_to, m)
                for m in sorted(globlib.glob(text, root_dir=rel_to, recursive=True))
            ]
        if not matches:
            if not os.path.isdir(root):
                self.error(display, "missing", f"no such folder: {root}")
            return  # the folder exists and holds nothing that matches: nothing to do
        in_output = self.outputs.holds(root)
        for match in matches:
            if self.glob_skips(match, root, in_output):
                continue
            try:
                mode = os.stat(match).st_mode
            except OSError as exc:
                self.os_error(match, exc)
                continue
            if stat.S_ISDIR(mode):
                self.folder(Path(match), match)
            else:
                self.file(Path(match), match, explicit=False, mode=mode)

    def glob_skips(self, match: str, root: str, in_output: bool) -> bool:
        """A match lying in an output folder (or figure folder, when `root` is in one)."""
        inner = Path(os.path.relpath(match, root)).parts
        current = root
        for part in inner:
            current = os.path.join(current, part)
            if part == ".." or not os.path.isdir(current):
                continue
            if in_output and part.endswith(_FIGURE_FOLDER_SUFFIX):
                return True
            if self.outputs.is_root(current):
                return True
        return False

    def prunes(self, folder: str, name: str, in_output: bool) -> bool:
        """A subfolder not to enter: hidden, an output folder, or a figure folder in one."""
        if name.startswith("."):
            return True
        if in_output and name.endswith(_FIGURE_FOLDER_SUFFIX):
            return True
        return self.outputs.is_root(folder)

    def file(self, path: Path, display: str, *, explicit: bool, mode: int) -> int:
        """Add one file; return 1 if it is a document."""
        if not stat.S_ISREG(mode):
            if explicit:
                self.error(display, "not_a_document", "not a regular file")
            return 0
        try:
            kind, size = _sniff(path)
        except NotRegularFileError:
            if explicit:
                self.error(display, "not_a_document", "not a regular file")
            return 0
        except OSError as exc:
            self.os_error(display, exc)
            return 0
        if kind is not None:
            self.add(path, display, kind)
            return 1
        if explicit or path.suffix.lower() in DOCUMENT_SUFFIXES:
            # Named explicitly, or named like a document: say so rather than skip it silently.
            if size == 0:
                self.error(display, "empty", "the file is empty (0 bytes)")
            else:
                self.error(display, "not_a_document", "not a PDF or a supported image (by content)")
        return 0

    def folder(self, folder: Path, display: str) -> None:
        in_output = self.outputs.holds(str(folder))
        for rel in self.walk(folder, display, in_output):
            if self.glob and not fnmatch.fnmatchcase(rel.name.casefold(), self.glob):
                continue
            path = folder.joinpath(*rel.parts)
            shown = os.path.join(display, *rel.parts)
            try:
                mode = os.stat(path).st_mode
            except OSError as exc:
                if os.path.islink(path) and isinstance(exc, FileNotFoundError):
                    self.error(shown, "missing", "broken symbolic link")
                else:
                    self.os_error(shown, exc)
                continue
            self.file(path, shown, explicit=False, mode=mode)

    def walk(self, folder: Path, display: str, in_output: bool) -> list[PurePosixPath]:
        """Files under `folder` (symlinked folders not followed, pruned folders skipped), sorted."""

        def onerror(exc: OSError) -> None:
            where = os.path.relpath(exc.filename, folder) if exc.filename else "."
            self.os_error(os.path.normpath(os.path.join(display, where)), exc)

        found: list[PurePosixPath] = []
        for root, dirs, files in os.walk(folder, onerror=onerror):
            dirs[:] = [d for d in dirs if not self.prunes(os.path.join(root, d), d, in_output)]
            inner = PurePosixPath(*Path(os.path.relpath(root, folder)).parts)
            found.extend(inner / name for name in files if not name.startswith("."))
        return sorted(found, key=lambda p: p.parts)

    def add(self, path: Path, display: str, kind: DocKind) -> None:
        real = os.path.realpath(path)
        if real in self._seen:
            return
        self._seen.add(real)
        self.found.append(_Found(path.absolute(), display, kind, _naming_path(path)))

    def os_error(self, display: str, exc: OSError) -> None:
        kind = "missing" if isinstance(exc, FileNotFoundError) else "unreadable"
        self.error(display, kind, _reason(exc))

    def error(self, display: str, kind: str, detail: str) -> None:
        if (display, kind) not in self._reported:
            self._reported.add((display, kind))
            self.errors.append(InputError(display, kind, detail))


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def _read_bytes(stream: IO[Any]) -> bytes:
    """All of `stream` as bytes (its binary buffer when it has one: names need not be UTF-8)."""
    buffer = getattr(stream, "buffer", None)
    data = (buffer if buffer is not None else stream).read()
    return data if isinstance(data, bytes) else os.fsencode(data)


_UTF8_BOM = b"\xef\xbb\xbf"


def _entries(data: bytes, *, null: bool) -> list[str]:
    """Paths from a list: NUL-separated as they are, or one per line, stripped, `#` comments out."""
    if null:
        return [os.fsdecode(entry) for entry in data.split(b"\x00") if entry]
    # A UTF-8 byte-order mark (Notepad, PowerShell) is not part of the first name; CRLF line ends
    # lose their CR to `strip`.
    entries = (line.strip() for line in data.removeprefix(_UTF8_BOM).split(b"\n"))
    return [os.fsdecode(e) for e in entries if e and not e.startswith(b"#")]


def _glob_root(pattern: str) -> str:
    """The folder a glob starts from: its leading components without wildcards."""
    parts = pattern.split("/")
    fixed: list[str] = []
    for part in parts[:-1]:
        if _GLOB_MAGIC.search(part):
            break
        fixed.append(part)
    if fixed == [""]:
        return "/"
    return "/".join(fixed) or "."


def expand_inputs(
    args: Sequence[str],
    *,
    glob: str | None = None,
    stdin: IO[Any] | None = None,
    base: Path | None = None,
    out: Path | None = None,
    null: bool = False,
) -> tuple[list[Document], list[InputError]]:
    """Expand command-line inputs into named documents and per-input problems (see the module
    docstring for the rules).

    `glob` filters files found inside folders by name, case-insensitively (`*.pdf` matches
    `X.PDF`). `stdin` is the stream `-` reads (default `sys.stdin`; text or binary). `base` is the
    folder output names are relative to (None: the current folder). `out` is the output folder,
    never walked as input. `null`: `-` reads NUL-separated paths.
    """
    expander = _Expander(glob, stdin, out, null)
    for text in args:
        expander.argument(text)
    found = expander.found
    bases = _bases(base)
    rels = _resolve_collisions(
        [_rel_from(f.naming, bases) for f in found], [f.naming for f in found]
    )
    docs = [Document(f.path, f.display, rel, f.kind) for f, rel in zip(found, rels, strict=True)]
    return docs, expander.errors
