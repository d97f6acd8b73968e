"""The only module that writes files: output paths, atomic writes and the resume manifest.

Guarantees:

* Nothing is written outside the output folder. A document's relative path may not be absolute,
  contain `..` or the reserved `.ocrprune` folder, and every target is checked after resolving the
  symlinks of its existing parents (again just before each write), so a symlinked subfolder that
  points elsewhere is refused with `OutputError`.
* Each file is written once: to a unique temp file in the same folder, flushed and fsynced, then
  moved over the target with `os.replace`. A crash leaves the old file or the new one, never half
  of one; the temp file is removed on failure.
* Layout for a document whose relative path is `a/b/report` (the input path without its suffix):

      out/a/b/report.md
      out/a/b/report.json
      out/a/b/report_images/page0001_fig01.jpg
      out/a/b/.ocrprune/report.manifest.json     (resume manifest)
      out/report.json, out/pages.csv             (run report, `write_run_report`)

* The manifest is written last. It records the resume key (input SHA-256, options hash, model,
  revision), each page's status, and the size and SHA-256 of every output it covers.
  `is_done` trusts it only if the key matches and every listed file still has that size and hash,
  so a crash before the manifest, or an output truncated or edited afterwards, means "not done".
  The old manifest is deleted before a document is rewritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ocrprune.errors import BusyError, OutputError
from ocrprune.records import Figure

MANIFEST_DIR = ".ocrprune"
MANIFEST_SCHEMA = "ocrprune.manifest/1"
REPORT_JSON = "report.json"
PAGES_CSV = "pages.csv"
_FORMAT_FIELDS = {"md": "md", "markdown": "md", "json": "json"}  # format -> DocPaths field


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
        for path in (paths.md, paths.json, paths.images_dir / "x", paths.manifest):
            ensure_inside(self.root, path)
        return paths


def ensure_inside(root: Path, path: Path) -> None:
    """Raise OutputError unless `path`'s parent, symlinks resolved, lies inside `root`."""
    parent = _resolve(path.parent)
    if parent != root and not parent.is_relative_to(root):
        raise OutputError(f"refusing to write {path}: it resolves to {parent}, outside {root}")


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `data` to `path` via a fsynced temp file in the same folder and `os.replace`."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name[:100]}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from exc
    _fsync_dir(path.parent)
    _remove_stale_temps(path)


_SWEPT: set[str] = set()  # folders this process has already cleared of dead writers' temps


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files left in `path`'s folder by processes killed mid-write (never trusted).

    Once per folder per process: a page checkpoint is written per page, and rescanning a folder
    of 1,500 checkpoints on every write would make a long document quadratic. Temps of a process
    that dies later are cleared by the next run (one run at a time writes an output folder)."""
    folder = os.fspath(path.parent)
    if folder in _SWEPT:
        return
    _SWEPT.add(folder)
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            name = entry.name
            if name.startswith(".") and name.endswith(".tmp"):
                pid = name[:-4].rsplit(".", 2)[-2]
                if pid.isdigit() and not _alive(int(pid)):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
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


def write_document(
    paths: DocPaths,
    markdown: str | None,
    json_text: str | None,
    figures: Iterable[Figure],
    manifest: Mapping[str, Any],
) -> dict:
    """Write figures, Markdown, JSON, then the manifest, each atomically; return the manifest.

    The old manifest goes first (a crash from here on leaves nothing a re-run trusts), and figure
    files the old manifest listed but the new document does not have are removed afterwards, so
    no stale crop survives a re-conversion."""
    old = read_manifest(paths)
    _unlink(paths.manifest)
    outputs: dict[str, dict[str, Any]] = {}
    formats: dict[str, str] = {}
    for figure in figures:
        if "/" in figure.name or figure.name in ("", ".", ".."):
            raise OutputError(f"refusing figure name {figure.name!r} in {paths.images_dir}")
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
    _remove_stale(paths, old, set(outputs) | set(formats.values()))
    return final


def _remove_stale(paths: DocPaths, old: Mapping[str, Any] | None, kept: set[str]) -> None:
    """Delete figure files an older manifest listed that the new one does not (a format no
    longer asked for is left alone: it is the user's)."""
    images = _rel(paths.md.parent, paths.images_dir)
    _remove_listed(paths, old, lambda name, rel: name not in kept and rel.parts[:1] == (images,))


def _remove_listed(
    paths: DocPaths, manifest: Mapping[str, Any] | None, remove: Callable[[str, PurePosixPath], bool]
) -> None:
    """Delete the outputs `manifest` lists that `remove` picks, inside the document's folder
    only, then its image folder if that is now empty."""
    outputs = manifest.get("outputs") if manifest else None
    if not isinstance(outputs, dict):
        return
    base = paths.md.parent
    for name in outputs:
        rel = PurePosixPath(str(name))
        if rel.is_absolute() or ".." in rel.parts or not remove(str(name), rel):
            continue
        target = base.joinpath(*rel.parts)
        ensure_inside(paths.root, target)
        _unlink(target)
    with contextlib.suppress(OSError):
        paths.images_dir.rmdir()  # only if now empty


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise OutputError(f"cannot remove {path}: {_reason(exc)}") from exc


def remove_document(paths: DocPaths) -> bool:
    """Remove a document's manifest (first), the outputs it lists and its checkpoints; True if
    there was a manifest. Used when an input that converted once now fails to open."""
    old = read_manifest(paths)
    if old is None:
        return False
    _unlink(paths.manifest)
    _remove_listed(paths, old, lambda name, rel: True)
    clear_checkpoints(paths)
    return True


def taken_by_other(paths: DocPaths, source_path: str) -> bool:
    """True if these output paths cannot be this document's: a folder sits where a file goes (or
    the reverse), or the manifest there belongs to another input (a case-insensitive file system
    folding two names together). The caller then uses a fallback name."""
    if paths.md.is_dir() or paths.json.is_dir():
        return True
    if paths.images_dir.exists() and not paths.images_dir.is_dir():
        return True
    manifest = read_manifest(paths)
    owner = manifest.get("source_path") if manifest else None
    return bool(owner) and owner != source_path


# ---- page checkpoints ----------------------------------------------------------------------------

_CHECKPOINT_KEY = "key.json"


def load_checkpoints(paths: DocPaths, key: Mapping[str, Any]) -> dict[int, dict]:
    """Page records saved by an earlier, unfinished (or partly failed) run with the same key.

    Checkpoints written under another key (other input bytes, options or model) are deleted."""
    folder = paths.checkpoints
    if folder is None or not folder.is_dir():
        return {}
    try:
        saved = json.loads((folder / _CHECKPOINT_KEY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = None
    if saved != json.loads(json.dumps(dict(key))):
        clear_checkpoints(paths)
        return {}
    records: dict[int, dict] = {}
    for entry in sorted(folder.glob("p*.json")):
        try:
            record = json.loads(entry.read_text(encoding="utf-8"))
            records[int(record["page"])] = record
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged checkpoint is just a page to redo
    return records


def save_checkpoint(paths: DocPaths, key: Mapping[str, Any], record: Mapping[str, Any]) -> None:
    """Atomically save one finished page's record (the key file first, once)."""
    folder = paths.checkpoints
    if folder is None:
        return
    key_file = folder / _CHECKPOINT_KEY
    if not key_file.exists():
        _write_checked(paths, key_file, json.dumps(dict(key), sort_keys=True) + "\n")
    text = json.dumps(dict(record), ensure_ascii=False, separators=(",", ":"))
    _write_checked(paths, folder / f"p{int(record['page']):06d}.json", text + "\n")


def clear_checkpoints(paths: DocPaths) -> None:
    """Remove a document's page checkpoints (after it is written with every page ok)."""
    folder = paths.checkpoints
    if folder is None or not folder.is_dir():
        return
    try:
        shutil.rmtree(folder)
    except OSError as exc:
        raise OutputError(f"cannot remove {folder}: {_reason(exc)}") from exc


# ---- the output root: marker, lock and run reports ---------------------------------------------

OUTPUT_MARKER = "OUTPUT_ROOT"
LOCK_FILE = "lock"
RUNS_DIR = "runs"


def prepare_output_root(out_dir: Path) -> None:
    """Check the folder is writable and mark it as ocrprune's output (`.ocrprune/OUTPUT_ROOT`),
    so input expansion never reads it back as documents, on this run or a later one."""
    check_writable(out_dir)
    marker = Path(out_dir) / MANIFEST_DIR / OUTPUT_MARKER
    if not marker.is_file():
        atomic_write(marker, "ocrprune output folder: never read as input\n")


class RunLock:
    """An exclusive lock on the output folder for the length of a run.

    A second run into the same folder (a cron job that overran) fails at once with `BusyError`
    (exit 75) instead of converting the same documents at the same time. The lock is an `flock`,
    released by the kernel when the process ends, even after `kill -9`."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / MANIFEST_DIR / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise OutputError(f"cannot create {self.path}: {_reason(exc)}") from exc
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
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def read_manifest(paths: DocPaths) -> dict | None:
    """The parsed manifest, or None if it is missing, unreadable or not a manifest."""
    try:
        data = json.loads(paths.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
        return None
    return data


def is_done(
    paths: DocPaths,
    expected_manifest_key: Mapping[str, Any],
    formats: Iterable[str],
    manifest: Mapping[str, Any] | None = None,
) -> bool:
    """True only if the manifest's key matches and every output it lists is intact.

    `expected_manifest_key` is `manifest_key(...)` (a whole `manifest_for(...)` is accepted too).
    Each of `formats` (`md`/`markdown`, `json`; others are ignored) must have been written.
    `manifest`: the manifest already read by the caller (read here when None).
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
    return all(_intact(base, name, stamp) for name, stamp in outputs.items())


def has_failed_pages(paths: DocPaths) -> bool:
    """For --retry-failed: True if the manifest records a non-`ok` page, or no pages at all.

    A document without a readable manifest is not done anyway, so this returns False for it.
    """
    manifest = read_manifest(paths)
    if manifest is None:
        return False
    statuses = manifest.get("page_statuses")
    if not isinstance(statuses, list) or not statuses:
        return True
    return any(status != "ok" for status in statuses)


def check_writable(out_dir: Path) -> None:
    """Create the output folder and probe it with a temp file; OutputError (exit 6) on failure."""
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ocrprune-probe-", dir=out_dir)
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
    of the output folder as the latest."""
    out_dir = Path(out_dir)
    if run_id:
        kept = out_dir / MANIFEST_DIR / RUNS_DIR / run_id
        atomic_write(kept / REPORT_JSON, report_json)
        atomic_write(kept / PAGES_CSV, pages_csv)
    report_path, csv_path = out_dir / REPORT_JSON, out_dir / PAGES_CSV
    atomic_write(report_path, report_json)
    atomic_write(csv_path, pages_csv)
    return report_path, csv_path


def _write_checked(paths: DocPaths, path: Path, data: bytes | str) -> str:
    """Check containment (symlinks may have appeared since `paths_for`), write, return the name
    relative to the document's folder as stored in the manifest."""
    ensure_inside(paths.root, path)
    atomic_write(path, data)
    return _rel(paths.md.parent, path)


def _rel(base: Path, path: Path) -> str:
    return path.relative_to(base).as_posix()


def _stamp(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _intact(base: Path, name: object, stamp: object) -> bool:
    if not isinstance(name, str) or not isinstance(stamp, dict):
        return False
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts:
        return False
    path = base.joinpath(*rel.parts)
    try:
        if not path.is_file() or path.stat().st_size != stamp.get("size"):
            return False
        return file_sha256(path) == stamp.get("sha256")
    except OSError:
        return False


def _resolve(path: Path) -> Path:
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # symlink loops: RuntimeError before Python 3.13
        raise OutputError(f"cannot resolve output path {path}: {exc}") from exc


def _fsync_dir(folder: Path) -> None:
    """Best effort: persist the rename itself (not possible on every OS or file system)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
