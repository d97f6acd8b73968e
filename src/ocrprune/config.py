"""Frozen run configuration: one object built by the CLI and passed explicitly.

Range checks live in `__post_init__`, so a config that exists is a config that can run.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ocrprune.errors import password_problem
from ocrprune.models.deepseek_ocr_v1 import DEEPSEEK_OCR_V1, ModeSpec

# The model's facts live in its spec (models/deepseek_ocr_v1.py); these names stay for callers.
DEFAULT_MODEL = DEEPSEEK_OCR_V1.hub_id
# The commit of deepseek-ai/DeepSeek-OCR we pin when loading by hub id (users can override with
# --revision).
DEFAULT_REVISION = DEEPSEEK_OCR_V1.revision
TINY_RANDOM = "tiny-random"

ModeName = Literal["tiny", "small", "base", "large", "gundam"]
DeviceName = Literal["auto", "cuda", "cpu"]
DtypeName = Literal["auto", "bf16", "fp32"]
PruneMethod = Literal["rtprune", "norm", "random"]
RendererName = Literal["mupdf", "pdfium"]
DEFAULT_RENDER_TIMEOUT = 60.0
DEFAULT_RAY_TIMEOUT = 30.0  # seconds `--ray` may take to reach the cluster

MODES: dict[str, ModeSpec] = dict(DEEPSEEK_OCR_V1.modes)
PROMPTS: dict[str, str] = dict(DEEPSEEK_OCR_V1.prompts)


def resolve_prompt(prompt: str) -> str:
    """A preset name or custom text; custom text must contain exactly one `<image>`."""
    if prompt in PROMPTS:
        return PROMPTS[prompt]
    image = DEEPSEEK_OCR_V1.tokens.image
    if prompt.count(image) != 1:
        raise ValueError(
            f"prompt must be one of {', '.join(PROMPTS)} or text containing {image} once: {prompt!r}"
        )
    return prompt.strip()


Keep = float | Literal["auto"]  # a keep setting once parsed: a fraction in (0, 1] or "auto"
KEEP_RULE = "keep must be 'auto' or a number in (0, 1]"


def parse_keep(text: str) -> Keep:
    """Parse the text of a `--keep` value: `auto` or a number in (0, 1]. Raises ValueError
    otherwise. The CLI parses each value once; configs then hold the typed keep."""
    value = text.strip().lower()
    if value == "auto":
        return "auto"
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{KEEP_RULE}, got {text!r}") from None
    if not _in_range(number):
        raise ValueError(f"{KEEP_RULE}, got {text!r}")
    return number


def check_keep(keep: Keep) -> None:
    """Validate an already typed keep (what configs hold): `auto` or a real number in (0, 1].
    Text is not parsed here; `parse_keep` is the one parser."""
    if keep == "auto":
        return
    if not isinstance(keep, numbers.Real) or not _in_range(float(keep)):
        shown = float(keep) if isinstance(keep, numbers.Real) else keep
        raise ValueError(f"{KEEP_RULE}, got {shown!r}")


def _in_range(number: float) -> bool:
    return math.isfinite(number) and 0.0 < number <= 1.0


def keep_label(keep: Keep) -> str:
    """Stable text form of a keep setting, e.g. `auto`, `1`, `0.4`: the one place a keep is
    written as text (reports, manifests, run descriptions, sweep rows)."""
    return "auto" if keep == "auto" else f"{float(keep):g}"


@dataclass(frozen=True)
class PruneConfig:
    """How visual tokens are pruned: `keep` is `auto` (RTPrune's dynamic ratio) or (0, 1]."""

    keep: Keep = "auto"
    method: PruneMethod = "rtprune"
    seed: int = 0

    def __post_init__(self) -> None:
        check_keep(self.keep)
        if self.method not in ("rtprune", "norm", "random"):
            raise ValueError(f"unknown prune method {self.method!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Which model to load and where to run it."""

    model: str = DEFAULT_MODEL
    revision: str | None = None
    device: DeviceName = "auto"
    dtype: DtypeName = "auto"
    attn: Literal["sdpa", "eager"] = "sdpa"
    seed: int = 0

    @property
    def is_tiny_random(self) -> bool:
        return self.model == TINY_RANDOM


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings, as the official pipeline uses them (runtime doc §1.7)."""

    mode: str = "gundam"
    prompt: str = PROMPTS["markdown"]
    max_new_tokens: int = 8192
    ngram_size: int = 30
    ngram_window: int = 90
    max_positions: int = DEEPSEEK_OCR_V1.max_positions
    page_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")


@dataclass(frozen=True)
class RasterConfig:
    """How pages become images."""

    dpi: int = 144
    max_pixels: int = 40_000_000
    password: str | None = None
    pages: tuple[tuple[int, int], ...] = ()
    # Seconds one page may take to render before it is stopped and marked `render_error`
    # (None: no limit). Rendering runs in a worker process so a stuck page cannot hang the run.
    render_timeout: float | None = DEFAULT_RENDER_TIMEOUT
    renderer: RendererName = "mupdf"
    # Where `password` came from (`--password-file FILE`, `OCRPRUNE_PASSWORD`, `--password`), so
    # an `encrypted` failure names it (`password_problem`); None outside the CLI.
    password_source: str | None = None

    def password_problem(self, *, wrong: bool) -> str:
        """The one-line detail of an `encrypted` failure, naming the password's source."""
        return password_problem(self.password_source, wrong=wrong)

    def __post_init__(self) -> None:
        if not 18 <= self.dpi <= 1200:
            raise ValueError(f"dpi must be between 18 and 1200, got {self.dpi}")
        if self.render_timeout is not None and not self.render_timeout > 0:
            raise ValueError(f"render timeout must be positive, got {self.render_timeout}")
        if self.renderer not in ("mupdf", "pdfium"):
            raise ValueError(f"unknown renderer {self.renderer!r}; use mupdf or pdfium")


@dataclass(frozen=True)
class RunConfig:
    """Everything one `ocrprune convert` run needs."""

    inputs: tuple[str, ...]
    out: Path
    model: ModelConfig = field(default_factory=ModelConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    raster: RasterConfig = field(default_factory=RasterConfig)
    formats: tuple[str, ...] = ("md", "json")
    glob: str | None = None
    batch_size: int | None = None
    page_separator: str = "\n\n<--- Page Split --->\n\n"
    stdout: bool = False
    force: bool = False
    retry_failed: bool = False
    fail_fast: bool = False
    queue_pages: int = 16
    # Output paths are the inputs' paths relative to `base` (None: the current folder), so the
    # same input always maps to the same output, whatever else is in the run.
    base: Path | None = None
    null_input: bool = False  # `-` reads NUL-separated paths (find -print0)
    engine: Literal["hf", "vllm"] = "hf"  # what decodes: transformers `generate` or vLLM
    # Convert on Ray (`--ray [ADDRESS]`): "" for a local instance (or the one RAY_ADDRESS names),
    # `auto`, `HOST:PORT` or `ray://HOST:PORT` to join a cluster; None: convert in this process.
    ray: str | None = None
    gpus: int | None = None  # Ray workers (one GPU each); None: as many as the cluster has
    # Seconds `--ray` may take to reach (or start) the cluster before the run fails with exit 5,
    # before `--out` is created or locked.
    ray_timeout: float = DEFAULT_RAY_TIMEOUT

    def __post_init__(self) -> None:
        bad = set(self.formats) - {"md", "json"}
        if bad:
            raise ValueError(f"unknown format(s): {', '.join(sorted(bad))}; use md,json")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch size must be at least 1")
        if self.engine not in ("hf", "vllm"):
            raise ValueError(f"unknown engine {self.engine!r}; use hf or vllm")
        if self.gpus is not None and self.gpus < 1:
            raise ValueError("gpus must be at least 1")
        if not self.ray_timeout > 0:
            raise ValueError("ray_timeout must be more than 0 seconds")
        if self.ray is not None and self.stdout:
            raise ValueError("--ray writes files into --out; it cannot write to --stdout")
