"""One document in a run: its state while its pages are in flight, its input digest, and the
picklable plan a distributed driver hands a worker."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from ocrprune.errors import InputError, UnsafeOutputError
from ocrprune.inputs import Document
from ocrprune.records import PageResult
from ocrprune.writers import files


@dataclass
class DocState:
    """A document in flight: its pages arrive out of batch order and are sorted at the end."""

    index: int
    doc: Document
    shown: str  # the escaped display name used in every record and log line
    rel: PurePosixPath
    paths: files.DocPaths | None
    digest: str = ""
    key: dict[str, Any] = field(default_factory=dict)
    reuse: dict[int, PageResult] = field(default_factory=dict)  # checkpointed pages
    caps: dict[int, int] = field(default_factory=dict)  # the token cap each reused page ran with
    expected: list[int] = field(default_factory=list)
    results: dict[int, PageResult] = field(default_factory=dict)
    opened: bool = False
    rendered_all: bool = False
    error: InputError | None = None
    # A path of this document under --out that must not be written (a planted link): the
    # document is converted, then reported as an `unsafe_output` failure and not written.
    unsafe: UnsafeOutputError | None = None

    def complete(self) -> bool:
        if self.error is not None and not self.opened:
            return True
        # Results are only ever recorded for expected pages, so counting them is enough.
        return self.rendered_all and len(self.results) == len(self.expected)


def input_digest(doc: Document) -> str:
    """SHA-256 of an input, opened without blocking and only if it is still a regular file
    (an input replaced by a FIFO after listing would otherwise hang the run)."""
    try:
        fd = os.open(doc.path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InputError(doc.display, "missing", "the file no longer exists") from None
    except OSError as exc:
        raise InputError(doc.display, "unreadable", exc.strerror or str(exc)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(doc.display, "not_a_document", "no longer a regular file")
        digest = hashlib.sha256()
        while block := os.read(fd, 1 << 20):
            digest.update(block)
        return digest.hexdigest()
    except OSError as exc:
        raise InputError(doc.display, "unreadable", exc.strerror or str(exc)) from None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class PlannedDoc:
    """A document the driver of a distributed run planned: its input, its output name (collisions
    already resolved), its input digest and the resume key the driver checked. Picklable."""

    doc: Document
    rel: PurePosixPath
    digest: str
    key: dict[str, Any]
