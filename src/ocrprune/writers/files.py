"""The only module that writes files: output paths, atomic writes and the resume manifest.

Guarantees:

* Nothing is written, created, deleted or read outside the output folder, whatever is planted
  inside it. The output folder itself is resolved once (it may be a link the user made); below
  it every folder is opened with `O_NOFOLLOW` relative to its parent's descriptor, walking from
  the root, and every file is created, replaced, read and removed relative to its folder's
  descriptor, so a link planted anywhere (a subfolder, a figure or checkpoint folder, `.ocrprune`,
  its `lock` or `runs`) is refused with `UnsafeOutputError` however late it appears. A link that
  sits exactly where an output file goes is replaced by the new file (`os.replace` replaces the
  link, never its target). Outputs, manifests and checkpoints are never read or hashed through a
  link.
* A document's relative path may not be absolute, contain `..` or the reserved `.ocrprune`
  folder. A manifest may list only the document's own outputs (`NAME.md`, `NAME.json`,
  `NAME_images/FIG`); anything else is refused for that document, never deleted.
* Each file is written once: to a unique temp file (`O_CREAT|O_EXCL|O_NOFOLLOW`) in the same
  folder, flushed and fsynced, then moved over the target with `os.replace`. A crash leaves the
  old file or the new one, never half of one; the temp file is removed on failure, and temps of
  writers that died are swept once per folder per process.
* Layout for a document whose relative path is `a/b/report` (the input path without its suffix):

      out/a/b/report.md
      out/a/b/report.json
      out/a/b/report_images/page0001_fig01.jpg
      out/a/b/.ocrprune/report.manifest.json     (resume manifest)
      out/a/b/.ocrprune/report.pages/            (page checkpoints while in progress)
      out/report.json, out/pages.csv             (run report, `write_run_report`)

* The manifest is written last. It records the resume key (input SHA-256, options hash, model,
  revision), each page's status, and the size and SHA-256 of every output it covers.
  `is_done` trusts it only if the key matches and every listed file still has that size and hash,
  so a crash before the manifest, or an output truncated or edited afterwards, means "not done".
  The old manifest is deleted before a document is rewritten, and the outputs it listed that the
  new document does not have (figures, a format no longer asked for) are removed after.
* A damaged manifest or page checkpoint (truncated, not JSON or UTF-8, the wrong shape, an unknown
  schema, nested too deeply, larger than `MANIFEST_MAX_BYTES` / `CHECKPOINT_MAX_BYTES`, not a
  regular file) is treated as absent, with one warning naming it: the document or page is redone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ocrprune.errors import BusyError, OutputError, UnsafeOutputError
from ocrprune.names import escape_name
from ocrprune.records import Figure

log = logging.getLogger("ocrprune")

MANIFEST_DIR = ".ocrprune"
MANIFEST_SCHEMA = "ocrprune.manifest/1"
REPORT_JSON = "report.json"
PAGES_CSV = "pages.csv"
MANIFEST_MAX_BYTES = 64 << 20  # a manifest keeps a few hundred bytes per page: ~100,000 pages
CHECKPOINT_MAX_BYTES = 16 << 20  # one page's record, its figures as base64 JPEG
_FORMAT_FIELDS = {"md": "md", "markdown": "md", "json": "json"}  # format -> DocPaths field

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC
_LINK_ERRNOS = {errno.ELOOP, errno.EMLINK, errno.ENOTDIR}  # O_NOFOLLOW on a link (Linux, BSD)
_LINKS = "ocrprune never follows links in its output folder"


@dataclass(frozen=True)
class DocPaths:
    """Where one document's outputs go; `root` is the resolved output folder they must stay in."""

    md: Path
    json: Path
    images_dir: Path
    manifest: Path
    root: Path
    checkpoints: Path | None = None  # per-page checkpoints while the document is in progress


class OutputLayout:
    """Maps a document's relative path (POSIX, no suffix) to its output paths under `out_dir`."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.root = _resolve(Path(os.path.abspath(self.out_dir)))

    def paths_for(self, rel: PurePosixPath | str) -> DocPaths:
        """The document's paths; UnsafeOutputError if a link or a file already sits where one of
        its folders goes (checked again, without following links, at every write)."""
        rel = PurePosixPath(rel)
        text = str(rel)
        if rel.is_absolute() or text in ("", ".") or "\x00" in text or "\\" in text:
            raise OutputError(
                f"refusing output path {text!r}: must be relative to the output folder"
            )
        if ".." in rel.parts or MANIFEST_DIR in rel.parts:
            raise OutputError(
                f"refusing output path {text!r}: '..' and '{MANIFEST_DIR}' not allowed"
            )
        base = self.root.joinpath(*rel.parent.parts)
        paths = DocPaths(
            md=base / f"{rel.name}.md",
            json=base / f"{rel.name}.json",
            images_dir=base / f"{rel.name}_images",
            manifest=base / MANIFEST_DIR / f"{rel.name}.manifest.json",
            root=self.root,
            checkpoints=base / MANIFEST_DIR / f"{rel.name}.pages",
        )
        _check_folders(paths)
        return paths


def _check_folders(paths: DocPaths) -> None:
    """Refuse a document whose folder, `.ocrprune` folder, figure or checkpoint folder is a link
    (or whose folder is a file), before any page of it is converted."""
    folders = [paths.md.parent, paths.manifest.parent]
    folders += [paths.checkpoints] if paths.checkpoints is not None else []
    with contextlib.suppress(OSError):  # unreadable: the first write says why
        for folder in folders:
            _close(_walk(paths.root, _parts(paths.root, folder), create=False))
        st = _lstat_at(paths.root, _parts(paths.root, paths.images_dir))
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise UnsafeOutputError(paths.images_dir, _link_detail(paths.root, paths.images_dir))


def ensure_inside(root: Path, path: Path) -> None:
    """Raise UnsafeOutputError unless `path`'s parent, symlinks resolved, lies inside `root`."""
    parent = _resolve(path.parent)
    if parent != root and not parent.is_relative_to(root):
        raise UnsafeOutputError(path, f"it resolves to {parent}, outside {root}")


# ---- walking the output folder without following links -----------------------------------------


def _parts(root: Path, path: Path) -> tuple[str, ...]:
    """`path`'s components below `root` (every DocPaths path is built under its root)."""
    try:
        return path.relative_to(root).parts
    except ValueError:
        raise UnsafeOutputError(path, f"outside the output folder {root}") from None


def _walk(root: Path, parts: Sequence[str], *, create: bool) -> int | None:
    """A descriptor of `root/parts...`, each folder opened with O_NOFOLLOW relative to its parent
    (and created if missing and `create`); None if a folder is missing and not `create`.

    UnsafeOutputError if a component is a link or not a folder; OSError for real I/O failures."""
    if create:
        root.mkdir(parents=True, exist_ok=True)  # the output folder itself: the user's path
    try:
        fd = os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        if create:
            raise
        return None
    try:
        for depth, name in enumerate(parts, start=1):
            child = _open_child(fd, name, root.joinpath(*parts[:depth]), root, create)
            os.close(fd)
            fd = child
            if fd is None:
                return None
    except BaseException:
        _close(fd)
        raise
    return fd


def _open_child(fd: int, name: str, shown: Path, root: Path, create: bool) -> int | None:
    """Open (or create) the folder `name` in `fd` without following a link."""
    for _ in range(3):  # a folder removed or created by someone else between two calls
        in_the_way = False
        try:
            return os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                return None
        except OSError as exc:
            if exc.errno not in _LINK_ERRNOS:
                raise
            in_the_way = True
        if in_the_way:  # outside the except clause: the refusal is not "during" the OSError
            _refuse_entry(fd, name, shown, root, "not a folder")
            continue
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o777, dir_fd=fd)
    raise OSError(errno.EAGAIN, f"{shown} keeps changing")


def _refuse_entry(fd: int, name: str, shown: Path, root: Path, what: str) -> None:
    """Raise UnsafeOutputError for the entry `name` in `fd`: a link, or not the kind expected
    (`what` says which). Returns if it vanished meanwhile (the caller tries again)."""
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeOutputError(shown, _link_detail(root, shown))
    if not stat.S_ISDIR(st.st_mode):  # a folder now: replaced meanwhile, the caller tries again
        raise UnsafeOutputError(shown, f"{what}: a {_kind(st.st_mode)} is in the way")


def _link_detail(root: Path, shown: Path) -> str:
    target = Path(os.path.realpath(shown))
    where = "" if target == root or target.is_relative_to(root) else f", outside {root}"
    return f"a symbolic link to {target}{where}; {_LINKS}"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISREG, "file"), (stat.S_ISLNK, "link"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "device"


def _lstat_in(fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _lstat_at(root: Path, parts: Sequence[str]) -> os.stat_result | None:
    """lstat of `root/parts...` with every folder on the way walked without following links."""
    fd = _walk(root, parts[:-1], create=False)
    if fd is None:
        return None
    try:
        return _lstat_in(fd, parts[-1])
    finally:
        os.close(fd)


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


# ---- writing ------------------------------------------------------------------------------------


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `data` to `path` via a fsynced temp file in the same folder and `os.replace`.

    `path`'s folder is the caller's (created if missing, links followed as given); the file is
    created and replaced relative to it, never through a link."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from exc
    _write_at(path.parent, (path.name,), data)


def _write_at(root: Path, parts: Sequence[str], data: bytes | str) -> None:
    """Atomically write `root/parts...`, walking its folders from `root` without following links
    (creating them). UnsafeOutputError for a planted link or file; OutputError for I/O failures."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    target = root.joinpath(*parts)
    try:
        fd = _walk(root, parts[:-1], create=True)
        assert fd is not None
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {_reason(exc)}") from exc
    try:
        _replace_in(fd, parts[-1], payload)
        with contextlib.suppress(OSError):
            os.fsync(fd)  # persist the rename itself (not possible on every file system)
        _sweep_temps(fd, target.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {_reason(exc)}") from exc
    finally:
        os.close(fd)


def _replace_in(fd: int, name: str, payload: bytes) -> None:
    """Write a new temp file in folder `fd` and rename it over `name` (a link there is replaced,
    its target untouched); the temp file is removed on any failure."""
    tmp = f".{name[:100]}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    handle_fd = os.open(tmp, flags, 0o666, dir_fd=fd)
    try:
        with os.fdopen(handle_fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=fd)
        raise


_SWEPT: set[str] = set()  # folders this process has already cleared of dead writers' temps
_TEMP = re.compile(r"\..*\.(\d+)\.[^.]+\.tmp", re.DOTALL)  # .NAME.PID.TOKEN.tmp


def _sweep_temps(fd: int, folder: Path) -> None:
    """Delete temp files left in `folder` (open as `fd`) by processes killed mid-write (never
    trusted); unlinking a name removes a link, never its target.

    Once per folder per process: a page checkpoint is written per page, and rescanning a folder
    of 1,500 checkpoints on every write would make a long document quadratic. Temps of a process
    that dies later are cleared by the next run (one run at a time writes an output folder)."""
    key = os.fspath(folder)
    if key in _SWEPT:
        return
    _SWEPT.add(key)
    with contextlib.suppress(OSError), os.scandir(fd) as entries:
        for entry in entries:
            match = _TEMP.fullmatch(entry.name)
            if match and not _alive(int(match.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(entry.name, dir_fd=fd)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _unlink_at(root: Path, parts: Sequence[str]) -> None:
    """Remove the file `root/parts...` (a link there is removed, not followed); nothing if it or
    its folder is missing. UnsafeOutputError if a folder sits there or on the way is a link."""
    target = root.joinpath(*parts)
    try:
        fd = _walk(root, parts[:-1], create=False)
    except OSError as exc:
        raise OutputError(f"cannot remove {target}: {_reason(exc)}") from exc
    if fd is None:
        return
    try:
        st = _lstat_in(fd, parts[-1])
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise UnsafeOutputError(target, "a folder where ocrprune's file was")
        if st is not None:
            os.unlink(parts[-1], dir_fd=fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise OutputError(f"cannot remove {target}: {_reason(exc)}") from exc
    finally:
        os.close(fd)


def _rmdir_if_empty(root: Path, parts: Sequence[str]) -> None:
    with contextlib.suppress(OSError, UnsafeOutputError):
        fd = _walk(root, parts[:-1], create=False)
        if fd is not None:
            try:
                os.rmdir(parts[-1], dir_fd=fd)  # never follows a link; fails if not empty
            finally:
                os.close(fd)


# ---- reading state files: bounded, regular files only, damage reported once -------------------


class _Damaged(Exception):
    """A state file that exists but cannot be trusted; the message is the reason."""


def _read_in(fd: int, name: str, limit: int) -> bytes | None:
    """Up to `limit` bytes of the regular file `name` in folder `fd`, opened without following a
    link or blocking on a FIFO; None if missing, _Damaged if not a regular file or larger."""
    try:
        handle = os.open(name, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC, dir_fd=fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        st = _lstat_in(fd, name) if exc.errno in _LINK_ERRNOS else None
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise _Damaged("a symbolic link, not a regular file; never read") from None
        raise _Damaged(f"unreadable: {_reason(exc)}") from None
    try:
        st = os.fstat(handle)
        if not stat.S_ISREG(st.st_mode):
            raise _Damaged(f"a {_kind(st.st_mode)}, not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit and (block := os.read(handle, min(1 << 20, limit + 1 - size))):
            chunks.append(block)
            size += len(block)
    except OSError as exc:
        raise _Damaged(f"unreadable: {_reason(exc)}") from None
    finally:
        os.close(handle)
    if size > limit:
        raise _Damaged(f"larger than {_size(limit)}")
    return b"".join(chunks)


def _parse_json(data: bytes) -> Any:
    """The JSON value in `data`; _Damaged with a short reason otherwise (never RecursionError)."""
    if not data.strip():
        raise _Damaged("empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Damaged("not UTF-8") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise _Damaged("nested too deeply") from None
    except json.JSONDecodeError as exc:
        cut = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
        raise _Damaged("truncated" if cut else "not JSON") from None
    except ValueError:
        raise _Damaged("not JSON") from None


_WARNED: set[tuple[str, str, tuple[int, ...]]] = set()


def _warn_damaged(fd: int | None, name: str, path: Path, what: str, reason: str, then: str) -> None:
    """One warning per damaged file (a manifest is read several times per document)."""
    st = _lstat_in(fd, name) if fd is not None else None
    ident = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size) if st is not None else ()
    key = (os.fspath(path), reason, ident)
    if key in _WARNED:
        return
    _WARNED.add(key)
    shown = escape_name(path)
    log.warning("%s: damaged %s ignored (%s); %s", shown, what, reason, then, extra={"file": shown})


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 and not limit % (1 << 20) else f"{limit} bytes"


def _is_int(value: object) -> bool:
    return type(value) is int


def _str_or_none(value: object) -> bool:
    return value is None or isinstance(value, str)


# ---- hashes and the manifest --------------------------------------------------------------------


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (an input the user named, links followed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def options_hash(options: Mapping[str, Any]) -> str:
    """SHA-256 of the options as canonical JSON (sorted keys; non-JSON values via `str`)."""
    text = json.dumps(
        options, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def manifest_key(
    doc_hash: str, options: Mapping[str, Any], model: str, revision: str | None
) -> dict:
    """The part of a manifest that must match for a document to count as done."""
    return {
        "input_sha256": doc_hash,
        "options_sha256": options_hash(options),
        "model": model,
        "revision": revision,
    }


def manifest_for(
    doc_hash: str,
    options: Mapping[str, Any],
    model: str,
    revision: str | None,
    page_statuses: Sequence[str],
    *,
    source: str = "",
    source_path: str = "",
    pages: Sequence[Mapping[str, Any]] = (),
    error: str | None = None,
    error_kind: str | None = None,
) -> dict:
    """A manifest without outputs yet; `write_document` fills in `formats` and `outputs`.

    `pages` are the compact page records (statuses, tokens, timings; no text) that let a later
    run report a skipped document as it was converted; `source_path` tells which input owns this
    output name (an escaped absolute path)."""
    return {
        "schema": MANIFEST_SCHEMA,
        "key": manifest_key(doc_hash, options, model, revision),
        "source": source,
        "source_path": source_path,
        "options": json.loads(json.dumps(options, sort_keys=True, default=str)),
        "page_statuses": list(page_statuses),
        "error": error,
        "error_kind": error_kind,
        "pages": [dict(p) for p in pages],
        "formats": {},
        "outputs": {},
    }


def read_manifest(paths: DocPaths) -> dict | None:
    """The parsed manifest, or None if it is missing or damaged (then one warning names it).

    UnsafeOutputError if its folder is a link, or it lists a path that is not one of this
    document's outputs (`..`, absolute, another document's file): never trusted, never deleted."""
    parts = _parts(paths.root, paths.manifest)
    try:
        fd = _walk(paths.root, parts[:-1], create=False)
    except OSError:
        return None  # an unreadable .ocrprune folder: the write will say why
    if fd is None:
        return None
    try:
        data = _read_in(fd, parts[-1], MANIFEST_MAX_BYTES)
        if data is None:
            return None
        manifest = _parse_json(data)
        _check_manifest(manifest)
    except _Damaged as damaged:
        then = "the document will be converted again"
        _warn_damaged(fd, parts[-1], paths.manifest, "manifest", str(damaged), then)
        return None
    finally:
        os.close(fd)
    _check_listed(paths, manifest["outputs"])
    return manifest


def _check_manifest(data: object) -> None:
    """_Damaged unless `data` has the shape later code relies on."""
    if not isinstance(data, dict):
        raise _Damaged(f"a JSON {type(data).__name__}, not an object")
    schema = data.get("schema")
    if schema != MANIFEST_SCHEMA:
        raise _Damaged(f"unknown schema {_short(schema)}")
    checks: dict[str, Callable[[Any], bool]] = {
        "key": lambda v: isinstance(v, dict),
        "formats": lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        "outputs": lambda v: isinstance(v, dict) and all(map(_is_stamp, v.values())),
    }
    optional: dict[str, Callable[[Any], bool]] = {
        "page_statuses": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "pages": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
        "error": _str_or_none,
        "error_kind": _str_or_none,
        "source": lambda v: isinstance(v, str),
        "source_path": lambda v: isinstance(v, str),
    }
    for field, ok in checks.items():
        if field not in data or not ok(data[field]):
            raise _Damaged(f"wrong shape: {field!r} missing or of the wrong type")
    for field, ok in optional.items():
        if field in data and not ok(data[field]):
            raise _Damaged(f"wrong shape: {field!r} of the wrong type")


def _is_stamp(value: object) -> bool:
    return (
        isinstance(value, dict)
        and _is_int(value.get("size"))
        and value["size"] >= 0
        and isinstance(value.get("sha256"), str)
    )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fold(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


def _is_own(paths: DocPaths, name: str, *, exact: bool = False) -> bool:
    """True if `name` is one of this document's outputs; names that differ only in case count
    (a case-insensitive disk folding two documents together, found by `taken_by_other`) unless
    `exact` (what is deleted)."""
    fold = (lambda text: text) if exact else _fold
    rel = PurePosixPath(name)
    if name != str(rel) or "\x00" in name or "\\" in name:
        return False
    if len(rel.parts) == 1:
        return fold(name) in {fold(paths.md.name), fold(paths.json.name)}
    return (
        len(rel.parts) == 2
        and fold(rel.parts[0]) == fold(paths.images_dir.name)
        and _plain(rel.parts[1])
    )


def _check_listed(paths: DocPaths, outputs: Mapping[str, Any]) -> None:
    for name in outputs:
        if not _is_own(paths, name):
            raise UnsafeOutputError(
                paths.manifest,
                f"it lists {_short(name)}, not one of this document's outputs in "
                f"{paths.md.parent}; remove the manifest to convert the document again",
            )


def _plain(name: object) -> bool:
    """A single file name: no folder, no `..`, nothing a file system would read as a path."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\\x00")
    )


# ---- one document ------------------------------------------------------------------------------


def write_document(
    paths: DocPaths,
    markdown: str | None,
    json_text: str | None,
    figures: Iterable[Figure],
    manifest: Mapping[str, Any],
) -> dict:
    """Write figures, Markdown, JSON, then the manifest, each atomically; return the manifest.

    The old manifest goes first (a crash from here on leaves nothing a re-run trusts), and the
    outputs the old manifest listed that the new document does not have (figures, a format no
    longer asked for) are removed afterwards, so no old text or crop is taken for new.
    UnsafeOutputError (before anything is written, where it can be seen then) if a folder of the
    document is a link or a file, the old manifest lists a path that is not the document's, or a
    figure name is not a plain file name."""
    _check_folders(paths)
    old = read_manifest(paths)
    _unlink_at(paths.root, _parts(paths.root, paths.manifest))
    outputs: dict[str, dict[str, Any]] = {}
    formats: dict[str, str] = {}
    for figure in figures:
        if not _plain(figure.name):
            raise UnsafeOutputError(
                paths.images_dir / str(figure.name),
                f"figure name {_short(figure.name)} is not a plain file name "
                "(a damaged page checkpoint? --force redoes the document)",
            )
        outputs[_write_checked(paths, paths.images_dir / figure.name, figure.jpeg)] = _stamp(
            figure.jpeg
        )
    for fmt, path, text in (("md", paths.md, markdown), ("json", paths.json, json_text)):
        if text is not None:
            data = text.encode("utf-8")
            formats[fmt] = _write_checked(paths, path, data)
            outputs[formats[fmt]] = _stamp(data)
    final = dict(manifest) | {"formats": formats, "outputs": outputs}
    _write_checked(paths, paths.manifest, json.dumps(final, ensure_ascii=False, indent=2) + "\n")
    _remove_listed(paths, old, lambda name: name not in outputs)
    return final


def _remove_listed(
    paths: DocPaths, manifest: Mapping[str, Any] | None, remove: Callable[[str], bool]
) -> None:
    """Delete the outputs `manifest` (already checked by `read_manifest`) lists that `remove`
    picks, inside the document's folder only and never through a link, then its image folder if
    that is now empty."""
    if not manifest:
        return
    base = _parts(paths.root, paths.md.parent)
    for name in manifest["outputs"]:
        if _is_own(paths, name, exact=True) and remove(name):
            _unlink_at(paths.root, base + PurePosixPath(name).parts)
    _rmdir_if_empty(paths.root, _parts(paths.root, paths.images_dir))


def remove_document(paths: DocPaths) -> bool:
    """Remove a document's manifest (first), the outputs it lists and its checkpoints; True if
    there was a manifest. Used when an input that converted once now fails to open. A damaged
    manifest is not trusted: nothing is removed."""
    old = read_manifest(paths)
    if old is None:
        return False
    _unlink_at(paths.root, _parts(paths.root, paths.manifest))
    _remove_listed(paths, old, lambda name: True)
    clear_checkpoints(paths)
    return True


def taken_by_other(paths: DocPaths, source_path: str) -> bool:
    """True if these output paths cannot be this document's: a folder sits where a file goes (or
    the reverse), or the manifest there belongs to another input (a case-insensitive file system
    folding two names together). The caller then uses a fallback name. Nothing is followed: a
    link where a file goes is replaced when written; a link where the figure folder goes raises
    UnsafeOutputError."""
    root = paths.root
    for path in (paths.md, paths.json):
        st = _lstat_at(root, _parts(root, path))
        if st is not None and stat.S_ISDIR(st.st_mode):
            return True
    st = _lstat_at(root, _parts(root, paths.images_dir))
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise UnsafeOutputError(paths.images_dir, _link_detail(root, paths.images_dir))
    if st is not None and not stat.S_ISDIR(st.st_mode):
        return True
    manifest = read_manifest(paths)
    owner = manifest.get("source_path") if manifest else None
    return bool(owner) and owner != source_path


# ---- page checkpoints ----------------------------------------------------------------------------

_CHECKPOINT_KEY = "key.json"
_CHECKPOINT = re.compile(r"p(\d{1,9})\.json")


def load_checkpoints(paths: DocPaths, key: Mapping[str, Any]) -> dict[int, dict]:
    """Page records saved by an earlier, unfinished (or partly failed) run with the same key.

    Checkpoints written under another key (other input bytes, options or model) are deleted; a
    damaged one is skipped with a warning (that page is redone). UnsafeOutputError if the folder
    is a link, or a checkpoint names a figure outside the document's image folder."""
    folder = paths.checkpoints
    if folder is None:
        return {}
    try:
        fd = _walk(paths.root, _parts(paths.root, folder), create=False)
    except OSError:
        return {}
    if fd is None:
        return {}
    try:
        if not _key_matches(fd, folder, key):
            os.close(fd)
            fd = None
            clear_checkpoints(paths)
            return {}
        return _page_records(fd, folder)
    finally:
        _close(fd)


def _key_matches(fd: int, folder: Path, key: Mapping[str, Any]) -> bool:
    try:
        data = _read_in(fd, _CHECKPOINT_KEY, CHECKPOINT_MAX_BYTES)
        saved = _parse_json(data) if data is not None else None
        if data is not None and not isinstance(saved, dict):
            raise _Damaged(f"a JSON {type(saved).__name__}, not an object")
    except _Damaged as damaged:
        then = "the document's saved pages are discarded"
        path = folder / _CHECKPOINT_KEY
        _warn_damaged(fd, _CHECKPOINT_KEY, path, "page checkpoint key", str(damaged), then)
        return False
    return saved == json.loads(json.dumps(dict(key)))


def _page_records(fd: int, folder: Path) -> dict[int, dict]:
    with os.scandir(fd) as entries:
        names = sorted(
            (int(m.group(1)), e.name) for e in entries if (m := _CHECKPOINT.fullmatch(e.name))
        )
    records: dict[int, dict] = {}
    for page, name in names:
        try:
            data = _read_in(fd, name, CHECKPOINT_MAX_BYTES)
            if data is None:
                continue
            record = _parse_json(data)
            _check_record(record, page, folder / name)
        except _Damaged as damaged:
            then = f"page {page} will be converted again"
            _warn_damaged(fd, name, folder / name, "page checkpoint", str(damaged), then)
            continue
        records[page] = record
    return records


def _check_record(record: object, page: int, path: Path) -> None:
    """_Damaged unless `record` is page `page`'s record; UnsafeOutputError for a figure name
    that is not a plain file name (it would be written outside the image folder)."""
    if not isinstance(record, dict):
        raise _Damaged(f"a JSON {type(record).__name__}, not an object")
    if record.get("page") != page or not _is_int(record.get("page")):
        raise _Damaged(f"wrong shape: 'page' is not {page}")
    if not isinstance(record.get("status"), str):
        raise _Damaged("wrong shape: 'status' missing or not a string")
    figures = record.get("figures", [])
    if not isinstance(figures, list) or not all(isinstance(f, dict) for f in figures):
        raise _Damaged("wrong shape: 'figures' is not a list of objects")
    for figure in figures:
        if not _plain(figure.get("name")):
            raise UnsafeOutputError(
                path,
                f"it names figure {_short(figure.get('name'))}, outside the document's image "
                "folder (--force redoes the document)",
            )


def save_checkpoint(paths: DocPaths, key: Mapping[str, Any], record: Mapping[str, Any]) -> None:
    """Atomically save one finished page's record (the key file first, once)."""
    folder = paths.checkpoints
    if folder is None:
        return
    parts = _parts(paths.root, folder)
    key_file = _lstat_at(paths.root, (*parts, _CHECKPOINT_KEY))
    if key_file is None or not stat.S_ISREG(key_file.st_mode):
        text = json.dumps(dict(key), sort_keys=True) + "\n"
        _write_at(paths.root, (*parts, _CHECKPOINT_KEY), text)
    text = json.dumps(dict(record), ensure_ascii=False, separators=(",", ":"))
    _write_at(paths.root, (*parts, f"p{int(record['page']):06d}.json"), text + "\n")


def clear_checkpoints(paths: DocPaths) -> None:
    """Remove a document's page checkpoints (after it is written with every page ok), without
    following a link: UnsafeOutputError if the checkpoint folder or one above it is a link."""
    folder = paths.checkpoints
    if folder is None:
        return
    *parent, name = _parts(paths.root, folder)
    try:
        fd = _walk(paths.root, parent, create=False)
    except OSError as exc:
        raise OutputError(f"cannot remove {folder}: {_reason(exc)}") from exc
    if fd is None:
        return
    try:
        st = _lstat_in(fd, name)
        if st is None:
            return
        if not stat.S_ISDIR(st.st_mode):
            _refuse_entry(fd, name, folder, paths.root, "not a folder")
            return
        _rmtree_in(fd, name, folder)
    except OSError as exc:
        raise OutputError(f"cannot remove {folder}: {_reason(exc)}") from exc
    finally:
        os.close(fd)


def _rmtree_in(fd: int, name: str, folder: Path) -> None:
    """Remove the folder `name` in `fd` and everything in it, never following a link."""
    if shutil.rmtree.avoids_symlink_attacks:  # fd-based (Linux; macOS on recent Pythons)
        shutil.rmtree(name, dir_fd=fd)
        return
    inner = os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
    try:  # a checkpoint folder holds files only; a planted folder inside it is refused
        for entry in list(os.scandir(inner)):
            if entry.is_dir(follow_symlinks=False):
                raise UnsafeOutputError(folder / entry.name, "a folder inside a checkpoint folder")
            os.unlink(entry.name, dir_fd=inner)
    finally:
        os.close(inner)
    os.rmdir(name, dir_fd=fd)


# ---- the output root: marker, lock and run reports ---------------------------------------------

OUTPUT_MARKER = "OUTPUT_ROOT"
LOCK_FILE = "lock"
RUNS_DIR = "runs"


def _root_of(out_dir: Path) -> Path:
    return _resolve(Path(os.path.abspath(out_dir)))


def prepare_output_root(out_dir: Path) -> None:
    """Check the folder is writable and mark it as ocrprune's output (`.ocrprune/OUTPUT_ROOT`),
    so input expansion never reads it back as documents, on this run or a later one.

    UnsafeOutputError (before anything is written) if `.ocrprune`, its marker or its `runs`
    folder is a link or the wrong kind of file."""
    check_writable(out_dir)
    root = _root_of(out_dir)
    folder = root / MANIFEST_DIR
    try:
        fd = _walk(root, (MANIFEST_DIR,), create=True)
        assert fd is not None
    except OSError as exc:
        raise OutputError(f"cannot write {folder}: {_reason(exc)}") from exc
    try:
        runs = _lstat_in(fd, RUNS_DIR)
        if runs is not None and not stat.S_ISDIR(runs.st_mode):
            _refuse_entry(fd, RUNS_DIR, folder / RUNS_DIR, root, "not a folder")
        marker = _lstat_in(fd, OUTPUT_MARKER)
        if marker is not None and stat.S_ISREG(marker.st_mode):
            return
        if marker is not None:
            shown = folder / OUTPUT_MARKER
            if stat.S_ISLNK(marker.st_mode):
                raise UnsafeOutputError(shown, _link_detail(root, shown))
            raise UnsafeOutputError(shown, f"a {_kind(marker.st_mode)}, not a regular file")
    finally:
        os.close(fd)
    _write_at(root, (MANIFEST_DIR, OUTPUT_MARKER), "ocrprune output folder: never read as input\n")


class RunLock:
    """An exclusive lock on the output folder for the length of a run.

    A second run into the same folder (a cron job that overran) fails at once with `BusyError`
    (exit 75) instead of converting the same documents at the same time. The lock is an `flock`,
    released by the kernel when the process ends, even after `kill -9`. The lock file is opened
    without following a link (UnsafeOutputError), and its pid is written only into a regular file
    that has no other hard link."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / MANIFEST_DIR / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            finally:
                os.close(fd)
            raise BusyError(
                f"another ocrprune run (pid {holder}) is writing to {self.path.parent.parent}; "
                "try again when it ends"
            ) from None
        if os.fstat(fd).st_nlink == 1:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def _open(self) -> int:
        root = _root_of(self.path.parent.parent)
        try:
            folder = _walk(root, (MANIFEST_DIR,), create=True)
            assert folder is not None
        except OSError as exc:
            raise OutputError(f"cannot create {self.path}: {_reason(exc)}") from exc
        shown = root / MANIFEST_DIR / LOCK_FILE
        try:
            flags = os.O_RDWR | os.O_CREAT | _NOFOLLOW | _NONBLOCK | _CLOEXEC
            fd = os.open(LOCK_FILE, flags, 0o666, dir_fd=folder)
        except OSError as exc:
            if exc.errno in _LINK_ERRNOS:
                raise UnsafeOutputError(shown, _link_detail(root, shown)) from None
            raise OutputError(f"cannot create {self.path}: {_reason(exc)}") from exc
        finally:
            os.close(folder)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise UnsafeOutputError(shown, f"a {_kind(mode)}, not a regular file")
        return fd

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def is_done(
    paths: DocPaths,
    expected_manifest_key: Mapping[str, Any],
    formats: Iterable[str],
    manifest: Mapping[str, Any] | None = None,
) -> bool:
    """True only if the manifest's key matches and every output it lists is intact.

    `expected_manifest_key` is `manifest_key(...)` (a whole `manifest_for(...)` is accepted too).
    Each of `formats` (`md`/`markdown`, `json`; others are ignored) must have been written.
    `manifest`: the manifest already read by the caller (read here when None). Outputs are read
    without following links; a link or a non-regular file is not intact.
    """
    manifest = manifest if manifest is not None else read_manifest(paths)
    if manifest is None:
        return False
    expected = expected_manifest_key.get("key", expected_manifest_key)
    if manifest.get("key") != dict(expected):
        return False
    written, outputs = manifest.get("formats"), manifest.get("outputs")
    if not isinstance(written, dict) or not isinstance(outputs, dict) or not outputs:
        return False
    base = paths.md.parent
    for fmt in formats:
        field = _FORMAT_FIELDS.get(fmt)  # also the key under the manifest's "formats"
        if field is not None and written.get(field) != _rel(base, getattr(paths, field)):
            return False
    return all(_intact(paths, name, stamp) for name, stamp in outputs.items())


def check_writable(out_dir: Path) -> None:
    """Create the output folder and probe it with a temp file; OutputError (exit 6) on failure."""
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ocrprune-probe-", dir=out_dir)  # O_EXCL: no link
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"output folder {out_dir} is not writable: {_reason(exc)} (choose another with --out)"
        ) from exc


def write_run_report(
    out_dir: Path, report_json: str, pages_csv: str, run_id: str | None = None
) -> tuple[Path, Path]:
    """Write the run's `report.json` and `pages.csv` atomically: first under
    `.ocrprune/runs/<run_id>/` (one folder per run, so no run's report is lost), then at the top
    of the output folder as the latest. UnsafeOutputError if a folder on the way is a link."""
    out_dir = Path(out_dir)
    root = _root_of(out_dir)
    if run_id:
        if not _plain(run_id):
            raise UnsafeOutputError(root / MANIFEST_DIR / RUNS_DIR / run_id, "not a plain name")
        kept = (MANIFEST_DIR, RUNS_DIR, run_id)
        _write_at(root, (*kept, REPORT_JSON), report_json)
        _write_at(root, (*kept, PAGES_CSV), pages_csv)
    _write_at(root, (REPORT_JSON,), report_json)
    _write_at(root, (PAGES_CSV,), pages_csv)
    return out_dir / REPORT_JSON, out_dir / PAGES_CSV


def _write_checked(paths: DocPaths, path: Path, data: bytes | str) -> str:
    """Write `path` under the document's root without following links; return the name
    relative to the document's folder as stored in the manifest."""
    _write_at(paths.root, _parts(paths.root, path), data)
    return _rel(paths.md.parent, path)


def _rel(base: Path, path: Path) -> str:
    return path.relative_to(base).as_posix()


def _stamp(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _intact(paths: DocPaths, name: object, stamp: object) -> bool:
    """The listed output is a regular file (no link followed) with the recorded size and hash."""
    if not isinstance(name, str) or not _is_stamp(stamp) or not _is_own(paths, name):
        return False
    assert isinstance(stamp, dict)
    parts = _parts(paths.root, paths.md.parent) + PurePosixPath(name).parts
    try:
        fd = _walk(paths.root, parts[:-1], create=False)
    except (OSError, UnsafeOutputError):
        return False
    if fd is None:
        return False
    try:
        handle = os.open(parts[-1], os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC, dir_fd=fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    try:
        st = os.fstat(handle)
        if not stat.S_ISREG(st.st_mode) or st.st_size != stamp["size"]:
            return False
        digest = hashlib.sha256()
        while block := os.read(handle, 1 << 20):
            digest.update(block)
        return digest.hexdigest() == stamp["sha256"]
    except OSError:
        return False
    finally:
        os.close(handle)


def _resolve(path: Path) -> Path:
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # symlink loops: RuntimeError before Python 3.13
        raise OutputError(f"cannot resolve output path {path}: {exc}") from exc


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
