"""Running a batch: `run(config)` converts every input, on this machine or on a Ray cluster.

- `local`: `Run`, one run (plan, convert, conclude) with documented extension points, and
  `DocConverter`, its worker side (one planned document at a time);
- `plan`: where a document goes, its digest and resume key, skipped or resumed;
- `resume`: what makes two runs' outputs the same, what an earlier run already did;
- `convert`: `Conversion`, pages of planned documents through the engine, each document written
  as it completes (`writers.document` renders and writes it);
- `driver`: the one stream -> batch -> backend loop, shared with `sweep`;
- `batching`: `run_split`, batches split on failure; `document`: a document's state and results;
- `signals`: SIGINT/SIGTERM/SIGHUP as an orderly stop; `distributed`: the same run on Ray workers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from ocrprune.config import RunConfig
from ocrprune.progress import NoProgress, ProgressSink
from ocrprune.run.convert import EngineFactory
from ocrprune.run.local import Run, RunOutcome


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
