"""RTPrune (arXiv 2605.00392) as pure tensor functions.

Given one image's projected visual features (`[L, D]`, newline and separator tokens included, in
DeepSeek-OCR's order), its layout and a keep setting, return which positions survive and their
(merged) embeddings. Stage 1 keeps the top-K tokens by L2 norm; stage 2 merges every pruned token into
the kept ones with a log-domain Sinkhorn transport plan (cosine scores, dustbin 0.2, 100 iterations,
epsilon 1) and adds `0.1 * Pi @ V`. Newline and separator tokens are never pruned; a newline that
directly follows another kept newline (a row whose tokens were all pruned) is dropped.

This module imports torch and the standard library only: no transformers, no files. It takes device
and dtype from its inputs, so it runs on the GPU when the model does. Norms, cosines and Sinkhorn are
computed in fp32 and results cast back to the features' dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Keep = float | Literal["auto"]
Method = Literal["rtprune", "norm", "random"]

SINKHORN_ITERS = 100
DUSTBIN_SCORE = 0.2
MERGE_ALPHA = 0.1
SOBEL_THRESHOLD = 0.2
# K = floor(N * r): a tiny tolerance so that e.g. 100 * 0.29 (= 28.999999999999996) floors to 29.
_FLOOR_EPS = 1e-9


@dataclass(frozen=True)
class ImageLayout:
    """Token layout of one image block.

    No-crop modes: `[g rows of (g tokens + NL)] [SEP]`. Gundam: the stitched local grid first
    (`local_rows` rows of `local_cols` tokens + NL), then the global grid, then SEP.
    `local_rows = 10 * tile_rows`, `local_cols = 10 * tile_cols`, both 0 without tiles.
    """

    global_grid: int
    local_rows: int = 0
    local_cols: int = 0

    @property
    def local_length(self) -> int:
        return self.local_rows * (self.local_cols + 1) if self.local_rows else 0

    @property
    def length(self) -> int:
        """L = local_rows (local_cols + 1) + g (g + 1) + 1."""
        g = self.global_grid
        return self.local_length + g * (g + 1) + 1

    @property
    def visual_count(self) -> int:
        return self.local_rows * self.local_cols + self.global_grid**2


def newline_indices(layout: ImageLayout, device: torch.device | None = None) -> torch.Tensor:
    """Positions of the newline tokens, ascending: `[local_rows + g]`."""
    g = layout.global_grid
    local = torch.arange(layout.local_rows, device=device) * (layout.local_cols + 1) + layout.local_cols
    glob = layout.local_length + torch.arange(g, device=device) * (g + 1) + g
    return torch.cat([local, glob])


def layout_masks(layout: ImageLayout, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(newline_mask [L] bool, visual_index [N] long)`; the separator is position L - 1."""
    newline = torch.zeros(layout.length, dtype=torch.bool, device=device)
    newline[newline_indices(layout, device)] = True
    layout_token = newline.clone()
    layout_token[-1] = True
    visual_index = torch.nonzero(~layout_token).flatten()
    return newline, visual_index


@dataclass(frozen=True)
class PruneRecord:
    """What pruning did to one image; plain Python values for reports."""

    visual_total: int
    visual_kept: int
    layout_total: int
    layout_kept: int
    newlines_collapsed: int
    ratio: float
    setting: str
    method: str
    r_txt: float | None = None
    r_sim: float | None = None

    @property
    def length_before(self) -> int:
        return self.visual_total + self.layout_total

    @property
    def length_after(self) -> int:
        return self.visual_kept + self.layout_kept


@dataclass
class PruneResult:
    """`positions [L']` ascending indices into the unpruned block, `embeddings [L', D]`."""

    positions: torch.Tensor
    embeddings: torch.Tensor
    record: PruneRecord


def token_norms(visual: torch.Tensor) -> torch.Tensor:
    """L2 norm of each token: `[N, D] -> [N]`, fp32."""
    return visual.float().norm(dim=-1)


def select_top_norm(visual: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the `k` largest-norm tokens of `[N, D]`, sorted back to original order: `[k]`."""
    top = torch.topk(token_norms(visual), k, sorted=False).indices
    return torch.sort(top).values


def select_random(count: int, k: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """`k` distinct indices of `range(count)`, uniformly at random, ascending: `[k]`."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    order = torch.randperm(count, generator=generator, device=gen_device)[:k]
    return torch.sort(order.to(device)).values


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarities `[M, D] x [P, D] -> [M, P]`, fp32."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


def sinkhorn_log(scores: torch.Tensor, iters: int = SINKHORN_ITERS, dustbin: float = DUSTBIN_SCORE) -> torch.Tensor:
    """Transport plan between kept rows and pruned columns: `[M, P] -> Pi [M, P]`.

    SuperGlue-style: the scores get a dustbin row, column and corner of value `dustbin`; marginals
    are 1/(M+P) for real rows and columns, P/(M+P) for the dustbin row and M/(M+P) for the dustbin
    column; epsilon is 1, so scores enter the kernel as exp(C). The plan is scaled by (M+P), so each
    kept row sums to at most 1 over the real columns.
    """
    m, p = scores.shape
    c = scores.float()
    augmented = torch.full((m + 1, p + 1), dustbin, dtype=c.dtype, device=c.device)
    augmented[:m, :p] = c
    total = float(m + p)
    log_a = torch.full((m + 1,), -math.log(total), dtype=c.dtype, device=c.device)
    log_a[m] = math.log(p / total) if p else float("-inf")
    log_b = torch.full((p + 1,), -math.log(total), dtype=c.dtype, device=c.device)
    log_b[p] = math.log(m / total) if m else float("-inf")
    f = torch.zeros(m + 1, dtype=c.dtype, device=c.device)
    g = torch.zeros(p + 1, dtype=c.dtype, device=c.device)
    for _ in range(iters):
        f = log_a - torch.logsumexp(augmented + g[None, :], dim=1)
        g = log_b - torch.logsumexp(augmented + f[:, None], dim=0)
    plan = torch.exp(augmented + f[:, None] + g[None, :]) * total
    return plan[:m, :p]


def merge_pruned(kept: torch.Tensor, pruned: torch.Tensor, alpha: float = MERGE_ALPHA) -> torch.Tensor:
    """`v_i + alpha * sum_j Pi_ij v_j` for every kept token: `[M, D], [P, D] -> [M, D]`."""
    if pruned.shape[0] == 0 or kept.shape[0] == 0:
        return kept
    plan = sinkhorn_log(cosine_matrix(kept, pruned))
    merged = kept.float() + alpha * (plan @ pruned.float())
    return merged.to(kept.dtype)


def similarity_ratio(visual: torch.Tensor) -> float:
    """r_sim = 1 - mean_i (1/(N-1)) sum_{j != i} cos_ij^2 over `[N, D]`.

    With a single token there is no redundancy to measure; we return 1.0 (keep it).
    """
    n = visual.shape[0]
    if n < 2:
        return 1.0
    cos = cosine_matrix(visual, visual)
    cos.fill_diagonal_(0.0)
    mean_sq = (cos**2).sum(dim=1) / (n - 1)
    return float((1.0 - mean_sq.mean()).clamp(0.0, 1.0))


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def text_density(global_view: torch.Tensor, grid: int, threshold: float = SOBEL_THRESHOLD) -> float:
    """r_txt: mean Sobel edge-pixel fraction over the `grid x grid` patches of `[3, H, W]`.

    The view is normalised to [-1, 1]. Each patch is zero-padded on its own before the 3x3 Sobel, so
    a uniformly white patch scores its border ring (252/4096 for 64x64) and mid-grey padding scores 0.
    All patches go through one convolution.
    """
    _, height, width = global_view.shape
    ph, pw = height // grid, width // grid
    view = global_view[:, : ph * grid, : pw * grid].float()
    gray = 0.299 * view[0] + 0.587 * view[1] + 0.114 * view[2]  # [H, W]
    patches = gray.reshape(grid, ph, grid, pw).permute(0, 2, 1, 3).reshape(grid * grid, 1, ph, pw)
    kx = _SOBEL_X.to(device=view.device, dtype=view.dtype)
    kernels = torch.stack([kx, kx.T])[:, None]  # [2, 1, 3, 3]
    grads = F.conv2d(patches, kernels, padding=1)  # [g*g, 2, ph, pw]
    magnitude = grads.pow(2).sum(dim=1).sqrt()
    per_patch = (magnitude > threshold).float().mean(dim=(1, 2))
    return float(per_patch.mean())


def dynamic_keep_ratio(r_txt: float, r_sim: float) -> float:
    """r = 1 - (1 - r_txt)(1 - r_sim), the probabilistic OR of the two terms, in [0, 1]."""
    return min(1.0, max(0.0, 1.0 - (1.0 - r_txt) * (1.0 - r_sim)))


def keep_count(n: int, ratio: float) -> int:
    """K = floor(N * ratio), at least 1 (a tiny keep on Tiny mode would floor to 0), at most N."""
    if n == 0:
        return 0
    return max(1, min(n, math.floor(n * ratio + _FLOOR_EPS)))


def collapse_newlines(positions: torch.Tensor, newline_mask: torch.Tensor) -> torch.Tensor:
    """Drop a kept newline that directly follows another kept newline (a fully pruned row)."""
    is_nl = newline_mask[positions]
    previous_nl = torch.zeros_like(is_nl)
    previous_nl[1:] = is_nl[:-1]
    return positions[~(is_nl & previous_nl)]


def gapped_positions(prefix_len: int, block_positions: torch.Tensor, suffix_len: int, block_len: int) -> torch.Tensor:
    """Original position ids for `[prefix][kept image tokens][suffix]`: gaps where tokens went.

    prefix -> 0..prefix_len-1, kept image -> prefix_len + block_positions, suffix -> positions after
    the whole unpruned block, so decoding continues from the unpruned length.
    """
    device = block_positions.device
    return torch.cat(
        [
            torch.arange(prefix_len, device=device),
            prefix_len + block_positions.to(torch.long),
            prefix_len + block_len + torch.arange(suffix_len, device=device),
        ]
    )


def prune_image(
    features: torch.Tensor,
    layout: ImageLayout,
    keep: Keep,
    *,
    global_view: torch.Tensor | None = None,
    method: Method = "rtprune",
    generator: torch.Generator | None = None,
) -> PruneResult:
    """Prune one image block `[L, D]`; see the module docstring. `global_view` `[3, S, S]` is
    needed for `keep="auto"` (text density)."""
    if features.shape[0] != layout.length:
        raise ValueError(f"features have {features.shape[0]} rows, layout expects {layout.length}")
    device = features.device
    newline, visual_index = layout_masks(layout, device)
    visual = features[visual_index]  # [N, D]
    n = visual.shape[0]
    r_txt = r_sim = None
    if keep == "auto":
        if global_view is None:
            raise ValueError("keep='auto' needs the global view for text density")
        r_txt = text_density(global_view, layout.global_grid)
        r_sim = similarity_ratio(visual)
        ratio = dynamic_keep_ratio(r_txt, r_sim)
        setting = "auto"
    else:
        ratio = float(keep)
        if not 0.0 < ratio <= 1.0 or math.isnan(ratio):
            raise ValueError(f"keep must be in (0, 1], got {keep}")
        setting = f"{ratio:g}"
    k = keep_count(n, ratio)
    layout_total = int(newline.sum()) + 1

    def record(kept_layout: int, collapsed: int) -> PruneRecord:
        return PruneRecord(n, k, layout_total, kept_layout, collapsed, ratio, setting, method, r_txt, r_sim)

    if k >= n:
        positions = torch.arange(layout.length, device=device)
        return PruneResult(positions, features, record(layout_total, 0))

    if method == "random":
        chosen = select_random(n, k, generator, device)
    else:
        chosen = select_top_norm(visual, k)
    kept_mask = torch.zeros(n, dtype=torch.bool, device=device)
    kept_mask[chosen] = True
    kept_values = visual[chosen]
    if method == "rtprune":
        kept_values = merge_pruned(kept_values, visual[~kept_mask])

    block = features.clone()
    block[visual_index[chosen]] = kept_values
    keep_position = newline.clone()
    keep_position[-1] = True
    keep_position[visual_index[chosen]] = True
    positions = torch.nonzero(keep_position).flatten()
    collapsed_positions = collapse_newlines(positions, newline)
    collapsed = int(positions.numel() - collapsed_positions.numel())
    return PruneResult(collapsed_positions, block[collapsed_positions], record(layout_total - collapsed, collapsed))


def prune_images(
    features: list[torch.Tensor],
    layouts: list[ImageLayout],
    keep: Keep,
    *,
    global_views: torch.Tensor | None = None,
    method: Method = "rtprune",
    generator: torch.Generator | None = None,
) -> list[PruneResult]:
    """`prune_image` over a batch of images (each image's tokens are handled vectorised)."""
    return [
        prune_image(
            f,
            layout,
            keep,
            global_view=None if global_views is None else global_views[i],
            method=method,
            generator=generator,
        )
        for i, (f, layout) in enumerate(zip(features, layouts))
    ]
