"""Converting planned documents: their pages stream in, share batches through the engine, and each
document is written (or printed) as soon as its last page is done.

`Conversion` is the handler `driver.drive` calls for `convert`; a local run uses it for all its
pending documents, a Ray worker for one document at a time (`Run.convert_document`). It records
every finished document through the `record` callback it is given and never decides the run's
fate itself (`stopped` says whether the run stops).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ocrprune.config import RunConfig, keep_label
from ocrprune.errors import InputError, UnsafeOutputError
from ocrprune.progress import ProgressSink
from ocrprune.records import DocResult, KeepInfo, PageResult, RunInfo
from ocrprune.run.batching import BatchFailure, run_split
from ocrprune.run.document import DocState, doc_result, failed_page, log_document, page_result
from ocrprune.run.driver import StreamHandler, drive
from ocrprune.runtime.api import Backend
from ocrprune.writers import document as writer
from ocrprune.writers.document import DocTarget, OutputSettings, source_path

if TYPE_CHECKING:
    from ocrprune.raster import DocDone, DocFailed, DocOpened, PageRendered, RenderedPage
    from ocrprune.runtime.api import PageOutput

log = logging.getLogger("ocrprune")

# Opens the engine when the first page needs it: (engine, run description, batch size).
EngineFactory = Callable[[], "tuple[Backend, RunInfo, int]"]
Item = tuple[DocState, "RenderedPage"]


@dataclasses.dataclass(frozen=True)
class Delivery:
    """Where finished documents go: files under `--out` (`emit` None) or text for `--stdout`
    (`single`: the run named one input, printed as one document)."""

    settings: OutputSettings
    emit: Callable[[str], None] | None = None
    single: bool = False


class Conversion(StreamHandler[Item]):
    """Streams, batches and runs pending documents; writes each one once all its pages are done."""

    def __init__(
        self,
        config: RunConfig,
        delivery: Delivery,
        engine_factory: EngineFactory,
        info: RunInfo,
        progress: ProgressSink,
        record: Callable[[DocResult], None],
        stopped: Callable[[], bool] = lambda: False,
    ) -> None:
        self.config, self.delivery, self.factory, self.progress = config, delivery, engine_factory, progress
        self.record, self.is_stopped = record, stopped
        self.info = info  # the run description: provisional until the engine opens
        self.engine: Backend | None = None
        self.size = 1
        self.pending: list[DocState] = []
        self.active: dict[int, DocState] = {}
        self.discovered = 0

    # -- the run's side ---------------------------------------------------------------------
    def convert(self, pending: list[DocState]) -> None:
        """Stream, batch and run every pending document (an interrupt propagates)."""
        from ocrprune.raster import PageStream

        self.pending = pending
        stream = PageStream([s.doc for s in pending], self.config.raster, max_pages_in_flight=self.config.queue_pages)
        drive(stream, self)
        if not self.is_stopped():
            self.complete_leftovers()

    def complete_leftovers(self) -> None:
        """Every page gets a status: a document the stream or the engine left unfinished (a bug)
        is completed here with `internal`/`model_error` statuses instead of vanishing."""
        from ocrprune.raster import RenderedPage

        for position, state in enumerate(self.pending):
            if position in self.active:
                self.active.pop(position)
            elif state.opened or state.error is not None:
                continue  # finished normally (finished documents leave `active`)
            if not state.opened and state.error is None:
                state.error = InputError(state.doc.display, "internal", "the raster stream never delivered it")
            for page_no in state.expected:
                if page_no not in state.results:
                    lost = RenderedPage(page=page_no, image=None, render_ms=0.0)
                    self.set_page(state, self.failed_page(lost, "model_error", "no result (internal error)"))
            log.error("%s: internal error: the pipeline left this document unfinished", state.shown)
            state.rendered_all = True
            self.finish(state)

    # -- the stream's side (driver.StreamHandler) -------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.size

    def _state(self, index: int) -> DocState:
        state = self.pending[index]  # the stream numbers documents by their place in `pending`
        self.active[index] = state
        return state

    def _discover(self) -> None:
        self.discovered += 1
        if self.discovered == len(self.pending):
            self.progress.all_pages_known()

    def opened(self, event: DocOpened) -> None:
        state = self._state(event.index)
        state.opened = True
        state.expected = list(event.page_numbers)
        self.progress.pages_known(len(state.expected))
        reused = [p for p in state.expected if p in state.reuse]
        for page_no in reused:
            state.results[page_no] = state.reuse[page_no]
        if reused:
            self.progress.pages_finished(len(reused))
        self._discover()

    def rendered(self, event: PageRendered) -> Item | None:
        state, page = self._state(event.index), event.page
        if page.page in state.reuse:
            return None  # converted by an earlier run: its checkpoint stands
        if page.error is not None or page.image is None:
            message = page.error.detail if page.error is not None else "no image"
            self.set_page(state, self.failed_page(page, "render_error", message))
            self.progress.pages_finished(1)
            return None
        if self.engine is None:
            # The model loads when the first page needs it: a run whose pending inputs all fail
            # to open (or render) never loads it.
            self.engine, self.info, self.size = self.factory()
        return state, page

    def failed(self, event: DocFailed, queued: Sequence[Item]) -> None:  # type: ignore[override]
        from ocrprune.raster import RenderedPage

        state = self._state(event.index)
        if not state.opened:
            self._discover()
        state.error = event.error
        state.rendered_all = True
        waiting = {p.page for s, p in queued if s is state}
        # Not checkpointed one by one: a PDF claiming 100,000 pages would write 100,000 files;
        # the stream says the same again on a re-run, at no cost.
        for page_no in state.expected:
            if page_no not in state.results and page_no not in waiting:
                missing = RenderedPage(page=page_no, image=None, render_ms=0.0)
                state.results[page_no] = self.failed_page(missing, "render_error", event.error.detail)

    def done(self, event: DocDone) -> None:
        self._state(event.index).rendered_all = True

    def run_batch(self, items: list[Item]) -> None:
        """Run a batch through the shared splitter (split on failure, one result per page)."""
        engine = self.engine
        assert engine is not None

        def deliver(item: Item, output: PageOutput | BatchFailure) -> None:
            state, page = item
            if isinstance(output, BatchFailure):
                self.set_page(state, self.failed_page(page, "model_error", output.message))
            else:
                self.set_page(state, page_result(page, output))

        run_split(items, lambda batch: engine.run([page.image for _, page in batch]), deliver, engine.recover)
        self.progress.pages_finished(len(items))

    def settle(self) -> None:
        for index in [i for i, s in self.active.items() if s.complete()]:
            self.finish(self.active.pop(index))

    def stopped(self) -> bool:
        return self.is_stopped()

    # -- pages and documents ----------------------------------------------------------------
    def failed_page(self, page: RenderedPage, status: str, message: str) -> PageResult:
        """A page without model output, under this run's keep setting."""
        prune = self.config.prune
        return failed_page(page, status, message, KeepInfo(setting=keep_label(prune.keep), ratio=0.0, method=prune.method))

    def set_page(self, state: DocState, result: PageResult) -> None:
        """Record a finished page and checkpoint it, so a re-run never redoes it."""
        state.results[result.page] = result
        if state.paths is not None and state.key and state.unsafe is None:
            cap = state.caps.get(result.page, self.config.generation.max_new_tokens)
            try:
                writer.save_page(state.paths, state.key, result, cap)
            except UnsafeOutputError as unsafe:
                state.unsafe = unsafe  # reported once, when the document finishes

    def finish(self, state: DocState) -> None:
        """Write a complete document (outputs then manifest) and record it. A document whose
        outputs would go through a planted link is recorded as an `unsafe_output` failure and
        not written; the batch goes on."""
        result = doc_result(state)
        log_document(state, result.pages)
        delivery = self.delivery
        if delivery.emit is not None:
            self.record(result)
            settings = delivery.settings
            delivery.emit(
                writer.for_stdout(
                    result, self.info, formats=settings.formats, page_separator=settings.page_separator, single=delivery.single
                )
            )
            return
        assert state.paths is not None
        try:
            if state.unsafe is not None:
                raise state.unsafe
            if state.error is not None and not state.opened:
                # Nothing readable: nothing to write. A run that selects pages removes nothing.
                if state.error.kind != "no_pages_selected" and not self.config.raster.pages:
                    writer.forget_old_outputs(state.paths, state.shown, state.digest)
            else:
                target = DocTarget(state.paths, state.rel.name, state.shown, source_path(state.doc.path), state.digest, state.caps)
                writer.write(result, target, delivery.settings, self.info)
        except UnsafeOutputError as unsafe:
            result = dataclasses.replace(result, error=str(unsafe), error_kind=unsafe.kind)
            log.error("%s: %s: %s", state.shown, unsafe.kind, unsafe, extra={"file": state.shown, "kind": unsafe.kind})
        self.record(result)
