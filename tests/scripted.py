"""A scripted engine at the run's seam (no model): page texts and stop reasons decided by the test,
and the PDFs and run helpers the batch-contract tests share across stages."""

from __future__ import annotations

import signal
from pathlib import Path

import ocrprune.run as runner
from ocrprune.config import GenerationSettings, ModelConfig, PruneConfig, RunConfig
from ocrprune.errors import Interrupted
from ocrprune.records import KeepInfo, RunInfo, TokenCounts
from ocrprune.runtime.api import BackendBase

FAST = ["--model", "tiny-random", "--device", "cpu", "--mode", "tiny", "--batch-size", "4"]
INFO = RunInfo(model="scripted", revision=None, mode="tiny", keep="1", prune_method="rtprune",
               prompt="p", device="cpu", dtype="fp32", dummy_model=True)


class ScriptedEngine(BackendBase):
    """Stands in for the model at the pipeline's seam: the page's text says which page it was
    (PDF pages are drawn at distinct heights by `pdf_with_sizes`), and `script` decides each
    page's stop reason. Records every page it was asked to run."""

    def __init__(self, script=None, *, drop_last=False, interrupt_after=None, signum=signal.SIGINT):
        self.script = script or {}
        self.drop_last = drop_last
        self.interrupt_after = interrupt_after
        self.signum = signum
        self.seen: list[int] = []

    def run(self, images):
        from ocrprune.runtime.api import PageOutput

        outputs = []
        for image in images:
            if self.interrupt_after is not None and len(self.seen) >= self.interrupt_after:
                raise Interrupted(self.signum)
            page = page_of(image)
            self.seen.append(page)
            status, text, ids = self.script.get(page, ("ok", f"text of page {page}", [5, 6, 1]))
            outputs.append(
                PageOutput(raw_text=text, status=status, token_ids=ids,
                           tokens=TokenCounts(visual_total=64, visual_kept=32, prompt_unpruned=80, prompt=48, generated=len(ids)),
                           keep=KeepInfo(setting="1", ratio=0.5), preprocess_ms=1.0, encode_ms=2.0, prune_ms=0.5,
                           prefill_ms=3.0, decode_ms=4.0)
            )
        return outputs[:-1] if self.drop_last else outputs


def page_of(image) -> int:
    """The page number encoded in a test page's height (see `pdf_with_sizes`)."""
    return round(image.size[1] / 2) - 100


def pdf_with_sizes(path: Path, pages: int) -> Path:
    """A PDF whose page n is 100 + n points tall: at 144 dpi its image is 200 + 2n pixels tall."""
    import pymupdf

    doc = pymupdf.open()
    for n in range(1, pages + 1):
        doc.new_page(width=100, height=100 + n).insert_text((10, 30), f"page {n}", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(str(path))
    doc.close()
    return path


def run_scripted(tmp_path, inputs, engine, *, batch=2, out=None, **options):
    """`runner.run` over `inputs` (named relative to tmp_path) with the scripted engine."""
    config = RunConfig(
        inputs=tuple(str(p) for p in inputs),
        out=out or tmp_path / "out",
        model=ModelConfig(model="tiny-random", device="cpu"),
        prune=PruneConfig(keep=1.0),
        generation=GenerationSettings(mode="tiny", max_new_tokens=64),
        base=tmp_path,
        **options,
    )
    return runner.run(config, engine_factory=lambda: (engine, INFO, batch))


def statuses(outcome) -> dict[str, list[str]]:
    return {Path(d.source).name: [p.status for p in d.pages] for d in outcome.docs}
