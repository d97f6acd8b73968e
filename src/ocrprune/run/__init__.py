"""Running a batch: `run(config)` converts every input, on this machine or on a Ray cluster.

`local.Run` is a local run (plan, stream, batch, write, report); `document` holds a document's
state in flight; `resume` decides what an earlier run already did; `batching` runs batches with
splitting on failure; `signals` turns SIGINT/SIGTERM/SIGHUP into an orderly stop; `distributed`
runs the same documents on Ray workers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from ocrprune.config import RunConfig
from ocrprune.progress import NoProgress, ProgressSink
from ocrprune.run.local import EngineFactory, Run, RunOutcome


def run(
    config: RunConfig,
    *,
    progress: ProgressSink | None = None,
    stdin: TextIO | None = None,
    emit: Callable[[str], None] | None = None,
    engine_factory: EngineFactory | None = None,
) -> RunOutcome:
    """Convert every input of `config`; `emit` (for --stdout) receives documents instead of files.
    With `config.ray` set, the documents are converted by a pool of Ray workers (`distributed`)."""
    if config.ray is not None:
        from ocrprune.run.distributed import run_on_ray

        return run_on_ray(config, progress=progress or NoProgress(), stdin=stdin, engine_factory=engine_factory)
    return Run(config, progress or NoProgress(), emit, engine_factory).execute(stdin)


__all__ = ["Run", "RunOutcome", "run"]
