"""`run(config) -> RunOutcome`: inputs, streaming raster, batches, writers, report.

The batch contract, whatever the inputs and whatever the model side does:
- every input ends written, skipped as already done (reported with the statuses its manifest
  recorded), or as a named failure; every page that went in has exactly one status out. This is
  checked at the end of the run: a document or page the pipeline lost becomes an `internal`
  failure in the report instead of vanishing;
- pages from many documents share batches, and each document's pages are written in page order;
- memory stays bounded: only the render queue and the current batch hold page images;
- each finished page is checkpointed under `.ocrprune/` as it completes, so an interrupted run
  resumes at the first unfinished page; a document's final files appear atomically, manifest last,
  once all its pages are done, byte-identical to an uninterrupted run's (timings aside);
- SIGINT, SIGTERM and SIGHUP stop the run the same way: finished documents and page checkpoints are
  kept, the report says `interrupted`, and the exit code is 128 + the signal number;
- one run at a time writes into an output folder (`RunLock`, exit 75 for the second);
- the pipeline raises `OcrpruneError`s for run-level problems and never exits or prints.

Torch and transformers are imported only once there is a document to convert (after the inputs
are expanded and the output folder is checked), so usage problems, missing inputs, an unwritable
`--out` and an empty input set are reported at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import secrets
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, TextIO

from ocrprune.config import RunConfig
from ocrprune.errors import ExitCode, InputError, Interrupted, UnsafeOutputError
from ocrprune.inputs import expand_inputs
from ocrprune.names import escape_name
from ocrprune.progress import NoProgress, ProgressSink
from ocrprune.records import DocResult, RunInfo, RunSummary
from ocrprune.report import build_report, exit_code_for, pages_csv, summarize
from ocrprune.run.convert import Conversion, Delivery, EngineFactory
from ocrprune.run.document import DocState, PlannedDoc
from ocrprune.run.plan import PlanFailure, log_skipped, plan_document
from ocrprune.run.resume import RunKey, expected_revision, load_reuse
from ocrprune.run.signals import signals_as_interrupts
from ocrprune.runtime import open_backend, resolve_device_dtype
from ocrprune.runtime.api import Backend, LoadedInfo, describe_run
from ocrprune.writers import files
from ocrprune.writers.document import for_stdout

log = logging.getLogger("ocrprune")


@dataclass
class RunOutcome:
    """What a run did; the CLI prints the summary and exits with `exit_code`."""

    summary: RunSummary
    docs: list[DocResult]
    report: dict[str, Any] | None
    exit_code: ExitCode | int
    run_info: RunInfo | None = None
    report_written: bool = False  # report.json and pages.csv are in --out (not after an early stop)


@dataclass
class RunState:
    """What a run has done so far: the only part of a run that changes while it runs."""

    docs: list[DocResult] = field(default_factory=list)  # every input's outcome, in the order they end
    stop: bool = False  # --fail-fast: a document failed
    signal: int = 0  # the signal that interrupted the run
    run_info: RunInfo | None = None
    inputs_total: int = 0
    input_names: list[str] = field(default_factory=list)  # every input's shown name, for `not_reached`
    single_stdout_doc: bool = False  # --stdout with one input: printed as one document
    nothing_to_do: bool = False
    output_ready: bool = False  # --out is prepared and locked: the report goes there
    pending_records: list[DocResult] = field(default_factory=list)  # stdout: failures emitted once run_info is known


def _peak_rss_mb() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / 1024.0 if sys.platform != "darwin" else usage / 1024.0 / 1024.0


class Run:
    """One run: `execute` plans, converts and concludes it.

    Extension points, for a runner that converts elsewhere (`distributed` on Ray): `before_output`,
    `resolve_dtype`, `convert_pending`, `report_extra` and `peak_gpu_mb`; such a runner records
    each document it gets back with `record_converted`. `convert_document` is the worker side:
    one planned document with the engine this run holds."""

    def __init__(
        self,
        config: RunConfig,
        progress: ProgressSink,
        emit: Callable[[str], None] | None,
        engine_factory: EngineFactory | None,
    ) -> None:
        self.config = config
        self.progress = progress
        self.emit = emit
        self.engine_factory = engine_factory
        self.state = RunState()
        self.key: RunKey | None = None
        self.conversion: Conversion | None = None
        self.revision: str | None = None
        self.dtype_name: str = config.model.dtype
        self.device_name: str = config.model.device  # resolved with the dtype (`resolve_dtype`)
        # Sortable by start time, unique even for two runs in the same second.
        now = time.time_ns()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9)) + f".{now // 1000 % 10**6:06d}Z"
        self.run_id = f"{stamp}-{os.getpid()}-{secrets.token_hex(2)}"
        self.stack = contextlib.ExitStack()

    # -- the run -------------------------------------------------------------------------------
    def execute(self, stdin: TextIO | None) -> RunOutcome:
        """Plan, convert what is pending, conclude (also after an interrupt)."""
        started = time.perf_counter()
        with self.stack, signals_as_interrupts():
            try:
                pending = self.plan(stdin)
                if pending and not self.state.stop:
                    self.convert_pending(pending)
            except KeyboardInterrupt as exc:
                self.state.signal = exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)
                name = signal.Signals(self.state.signal).name
                log.error(
                    "interrupted (%s): finished documents and pages are kept; re-run to convert the rest",
                    name,
                )
            finally:
                self.progress.close()
            return self.conclude(started)

    def plan(self, stdin: TextIO | None) -> list[DocState]:
        """Everything a run does before converting: expand the inputs, prepare and lock `--out`,
        hash the inputs and skip what is done. Returns the documents left to convert."""
        config, state = self.config, self.state
        if config.raster.renderer != "mupdf":
            from ocrprune.raster import check_renderer

            check_renderer(config.raster.renderer)  # a missing extra fails before any work (exit 5)
        docs, problems = expand_inputs(
            list(config.inputs),
            glob=config.glob,
            stdin=stdin,
            base=config.base,
            out=None if self.emit is not None else config.out,
            null=config.null_input,
        )
        state.inputs_total = len(docs) + len(problems)
        state.input_names = [escape_name(p.path) for p in problems] + [escape_name(d.display) for d in docs]
        # One input named with --stdout prints one document (Markdown or JSON), failed or not.
        state.single_stdout_doc = self.emit is not None and state.inputs_total == 1
        self.progress.start(state.inputs_total)
        for problem in problems:
            self.fail_input(problem)
        if not docs and not problems:
            state.nothing_to_do = True
            log.warning("nothing to do: no documents found in %s", ", ".join(escape_name(i) for i in config.inputs))
            return []
        if docs:
            self.before_output()
        if self.emit is None:
            files.prepare_output_root(config.out)
            self.stack.enter_context(files.RunLock(config.out))
            state.output_ready = True
        if not docs or state.stop:
            return []  # every input failed: said without loading torch or a model
        run_key = self.resolve_key()
        layout = files.OutputLayout(config.out) if self.emit is None else None
        pending: list[DocState] = []
        for index, doc in enumerate(docs):
            planned = plan_document(index, doc, layout, run_key, config)
            if isinstance(planned, PlanFailure):
                self.fail_input(planned.error, planned.rel)
            elif isinstance(planned, DocResult):
                self.record(planned)
                log.debug("skipping %s: already done with the same options", planned.source)
            else:
                pending.append(planned)
            if state.stop:
                break
        log_skipped(state.docs)
        return pending

    def resolve_key(self) -> RunKey:
        """The dtype (`resolve_dtype`) and with it the resume key's parts, once per run."""
        self.dtype_name = self.resolve_dtype()
        self.key = RunKey.for_run(self.config, self.dtype_name)
        self.revision = self.key.revision
        return self.key

    def convert_pending(self, pending: list[DocState]) -> None:
        """Convert the planned documents: stream, batch and run them here (`Conversion`). A runner
        that converts elsewhere replaces this and records each document with `record_converted`."""
        assert self.key is not None
        if self.state.run_info is None:
            self.state.run_info = self._provisional_info()  # until a page needs the model
        self.conversion = Conversion(
            self.config,
            Delivery(self.key.output_settings(self.config), self.emit, self.state.single_stdout_doc),
            self.engine_factory or (lambda: build_engine(self.config)),
            self.state.run_info,
            self.progress,
            self.record_converted,
            lambda: self.state.stop,
        )
        self.conversion.convert(pending)

    def convert_document(self, state: DocState, info: RunInfo) -> DocResult:
        """Worker mode: convert one planned document (its resume key made with `resolve_key`,
        its checkpoints loaded) with this run's engine; no inputs, lock or report."""
        assert self.key is not None and self.engine_factory is not None
        results: list[DocResult] = []
        delivery = Delivery(self.key.output_settings(self.config))
        Conversion(self.config, delivery, self.engine_factory, info, NoProgress(), results.append).convert([state])
        if len(results) != 1:
            raise RuntimeError(f"{len(results)} results for one document")
        return results[0]

    # -- extension points ------------------------------------------------------------------------
    def before_output(self) -> None:
        """Called once there are documents, before `--out` is prepared and locked (the Ray runner
        joins its cluster here, so a bad address never holds the lock)."""

    def resolve_dtype(self) -> str:
        """The dtype the model will run in, as manifests record it. Locally the loader's choice
        (imports torch); the Ray runner answers as its workers will."""
        self.device_name, dtype = resolve_device_dtype(self.config.model)
        return dtype

    def report_extra(self) -> dict[str, Any]:
        """Keys a runner adds at the end of the report (the Ray runner: per-worker counts)."""
        return {}

    def peak_gpu_mb(self) -> float | None:
        """The most GPU memory the engine held (None without one); the Ray runner: its workers'."""
        engine = self.conversion.engine if self.conversion is not None else None
        return engine.peak_gpu_mb() if engine is not None else None

    # -- documents -----------------------------------------------------------------------------
    def record(self, result: DocResult) -> None:
        """Count a document as ended (converted, failed or skipped)."""
        self.state.docs.append(result)
        self.progress.document_finished()

    def record_converted(self, result: DocResult) -> None:
        """Count a document this run converted (or failed to); with --fail-fast a failure stops it."""
        self.record(result)
        if self.config.fail_fast and not result.ok:
            self.state.stop = True

    def fail_input(self, error: InputError, rel: PurePosixPath | None = None) -> None:
        """An input that never reached the raster stream (missing, unreadable, vanished)."""
        log.error("%s", error, extra={"file": escape_name(error.path), "kind": error.kind})
        shown = escape_name(error.path)
        stem = rel.name if rel is not None else shown
        result = DocResult(source=shown, stem=stem, error=error.detail, error_kind=error.kind)
        self.record(result)
        if self.emit is not None:
            self.state.pending_records.append(result)
        if self.config.fail_fast:
            self.state.stop = True

    def conclude(self, started: float) -> RunOutcome:
        """Account for every input, build the report and write it (also after an interrupt)."""
        config, state = self.config, self.state
        if self.conversion is not None:
            state.run_info = self.conversion.info  # the loaded engine's, once one opened
        if state.run_info is None:
            state.run_info = self._provisional_info()
        for result in state.pending_records:
            if self.emit is not None:
                single = state.single_stdout_doc
                self.emit(for_stdout(result, state.run_info, formats=config.formats, page_separator=config.page_separator, single=single))
        accounted = len(state.docs)
        if not state.signal and not state.stop and accounted != state.inputs_total:
            # Never drop an input silently: if the pipeline lost one, say so as a failure.
            log.error("internal error: %d input(s) not accounted for", state.inputs_total - accounted)
            for _ in range(state.inputs_total - accounted):
                state.docs.append(DocResult(source="?", stem="?", error="lost by the pipeline (a bug)", error_kind="internal"))
        reached = {d.source for d in state.docs}
        not_reached = [n for n in state.input_names if n not in reached] if state.signal or state.stop else []
        if not_reached:
            log.warning("%d input(s) not converted by this run (listed in report.json); re-run to convert them", len(not_reached))
        summary = summarize(state.docs, wall_seconds=time.perf_counter() - started, signal=state.signal, not_reached=not_reached)
        if state.nothing_to_do:
            return RunOutcome(summary, state.docs, None, ExitCode.OK, state.run_info)
        report = build_report(state.docs, summary, state.run_info, _peak_rss_mb(), self.peak_gpu_mb())
        report["run_id"] = self.run_id
        report.update(self.report_extra())
        written = self.emit is None and state.output_ready
        if written:
            files.write_run_report(config.out, _json(report), pages_csv(state.docs), self.run_id)
        return RunOutcome(summary, state.docs, report, exit_code_for(summary), state.run_info, written)

    def _provisional_info(self) -> RunInfo:
        """The run description before (or without) a loaded model: for documents that never
        reached it, and for the report of a run that loaded none."""
        config = self.config
        expected = LoadedInfo(
            model=config.model.model,
            revision=self.revision if self.revision is not None else expected_revision(config),
            device=self.device_name,
            dtype=self.dtype_name,
            dummy=config.model.is_tiny_random,
        )
        return describe_run(expected, generation=config.generation, prune=config.prune, engine=config.engine)


class DocConverter:
    """The worker side of a distributed run: converts pre-planned documents one at a time with an
    engine loaded once. No input expansion, no lock, no run report, but the same page checkpoints,
    manifests and atomic writes as a local run, so local and distributed runs resume each other.
    `convert` never raises for a document: anything unexpected becomes a failed `DocResult`
    (`internal`)."""

    def __init__(self, config: RunConfig, engine: Backend, info: RunInfo, batch_size: int) -> None:
        self.config = config
        self.engine, self.info, self.batch_size = engine, info, batch_size
        # The worker's own run: it resolves the dtype as this machine will run the model.
        self.run = Run(config, NoProgress(), None, lambda: (self.engine, self.info, self.batch_size))
        self.key = self.run.resolve_key()
        self.dtype_name = self.run.dtype_name
        self.options, self.revision = self.key.options, self.key.revision
        self.layout = files.OutputLayout(config.out)

    def convert(self, planned: PlannedDoc) -> DocResult:
        """One planned document, converted and written; never raises."""
        shown = escape_name(planned.doc.display)
        try:
            return self._convert(planned, shown)
        except UnsafeOutputError as unsafe:  # a link planted where this document's files go
            log.error("%s: %s: %s", shown, unsafe.kind, unsafe, extra={"file": shown, "kind": unsafe.kind})
            return DocResult(source=shown, stem=planned.rel.name, error=str(unsafe), error_kind=unsafe.kind)
        except Exception as exc:  # noqa: BLE001 - a worker never raises for a document
            log.debug("%s: worker failed", shown, exc_info=True)
            error = InputError(planned.doc.display, "internal", f"worker failed: {type(exc).__name__}: {exc}")
            log.error("%s", error, extra={"file": shown, "kind": "internal"})
            return DocResult(source=shown, stem=planned.rel.name, error=error.detail, error_kind="internal")

    def _convert(self, planned: PlannedDoc, shown: str) -> DocResult:
        key = self.key.key(planned.digest)
        if key != planned.key:
            log.warning(
                "%s: this worker's options differ from the driver's (dtype %s): a re-run may redo it",
                shown, self.dtype_name, extra={"file": shown},
            )
        state = DocState(
            index=0, doc=planned.doc, shown=shown, rel=planned.rel,
            paths=self.layout.paths_for(planned.rel), digest=planned.digest, key=key,
        )
        load_reuse(state, self.config)
        return self.run.convert_document(state, self.info)


def _json(report: dict[str, Any]) -> str:
    import json

    return json.dumps(report, ensure_ascii=False, indent=2) + "\n"


def build_engine(config: RunConfig) -> tuple[Backend, RunInfo, int]:
    """Open the configured engine (imports torch; vLLM only for `--engine vllm`), pick the batch size."""
    engine = open_backend(config.engine, config.model, config.generation, config.prune)
    info = describe_run(engine.loaded_info(), generation=config.generation, prune=config.prune, engine=config.engine)
    size = config.batch_size or engine.batch_size_hint()
    log.info(
        "model %s on %s (%s), engine %s, mode %s, keep %s, batch size %d",
        info.model, info.device, info.dtype, info.engine, info.mode, info.keep, size,
    )
    return engine, info, size
