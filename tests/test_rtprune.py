"""RTPrune's pure maths against hand-worked values and slow loop references (spec §10.8)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from ocrprune import rtprune
from ocrprune.models.deepseek_ocr_v1 import ImageLayout

# ---- slow references, written with plain loops --------------------------------------------------


def ref_sinkhorn(scores: list[list[float]], iters: int = 100, z: float = 0.2) -> list[list[float]]:
    m, p = len(scores), len(scores[0])
    c = [row[:] + [z] for row in scores] + [[z] * (p + 1)]
    n = m + p
    log_a = [math.log(1 / n)] * m + [math.log(p / n)]
    log_b = [math.log(1 / n)] * p + [math.log(m / n)]
    f = [0.0] * (m + 1)
    g = [0.0] * (p + 1)

    def lse(values: list[float]) -> float:
        top = max(values)
        return top + math.log(sum(math.exp(v - top) for v in values))

    for _ in range(iters):
        f = [log_a[i] - lse([c[i][j] + g[j] for j in range(p + 1)]) for i in range(m + 1)]
        g = [log_b[j] - lse([c[i][j] + f[i] for i in range(m + 1)]) for j in range(p + 1)]
    return [[math.exp(c[i][j] + f[i] + g[j]) * n for j in range(p)] for i in range(m)]


def ref_cos(u: list[float], v: list[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def ref_edge_fraction(patch: list[list[float]], threshold: float = 0.2) -> float:
    """Sobel magnitude > threshold, zero padding around this patch only."""
    h, w = len(patch), len(patch[0])
    kx = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    at = lambda y, x: patch[y][x] if 0 <= y < h and 0 <= x < w else 0.0  # noqa: E731
    count = 0
    for y in range(h):
        for x in range(w):
            gx = sum(kx[i][j] * at(y + i - 1, x + j - 1) for i in range(3) for j in range(3))
            gy = sum(kx[j][i] * at(y + i - 1, x + j - 1) for i in range(3) for j in range(3))
            count += math.sqrt(gx * gx + gy * gy) > threshold
    return count / (h * w)


# ---- layout ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("grid", "length"), [(8, 73), (10, 111), (16, 273), (20, 421)])
def test_block_length_matches_placeholder_counts(grid, length):
    assert ImageLayout(grid).length == length


def test_newline_positions_without_tiles():
    layout = ImageLayout(16)
    assert rtprune.newline_indices(layout).tolist() == [i * 17 + 16 for i in range(16)]
    newline, visual = rtprune.layout_masks(layout)
    assert newline.sum() == 16 and not newline[272]  # 272 is the separator
    assert visual.numel() == 256 and 16 not in visual.tolist() and 272 not in visual.tolist()


def test_newline_positions_in_gundam_two_by_three_tiles():
    layout = ImageLayout(16, local_rows=30, local_cols=20)
    assert layout.length == 30 * 21 + 16 * 17 + 1 == 903
    nl = rtprune.newline_indices(layout).tolist()
    assert len(nl) == 46
    assert nl[:3] == [20, 41, 62] and nl[29] == 29 * 21 + 20
    assert nl[30] == 630 + 16 and nl[-1] == 630 + 15 * 17 + 16
    _, visual = rtprune.layout_masks(layout)
    assert visual.numel() == 600 + 256


# ---- stage 2: optimal transport ------------------------------------------------------------------


def test_sinkhorn_matches_a_loop_reference():
    gen = torch.Generator().manual_seed(1)
    scores = torch.rand(5, 3, generator=gen) * 2 - 1
    got = rtprune.sinkhorn_log(scores)
    want = torch.tensor(ref_sinkhorn(scores.tolist()))
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(("m", "p"), [(84, 16), (60, 40)])
def test_plan_row_sums_are_close_to_p_over_m_plus_p(m, p):
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(m + p, 64, generator=gen) + 0.6  # mean cosine about 0.26, like the spec's
    plan = rtprune.sinkhorn_log(rtprune.cosine_matrix(feats[:m], feats[m:]))
    rows = plan.sum(dim=1)
    # With epsilon = 1 and cosines in [-1, 1] the kernel exp(C) varies by a factor e^(row spread).
    # Row means of C here differ by about +-0.1, so a row sum may drift ~10 % from P/(M+P): allow
    # 15 % per row. The marginals pin the total mass, so the mean row sum is within 3 %.
    target = p / (m + p)
    assert torch.allclose(rows, torch.full_like(rows, target), rtol=0.15, atol=0.0)
    assert float(rows.mean()) == pytest.approx(target, rel=0.03)
    assert (rows <= 1.0 + 1e-5).all()


def test_merge_adds_a_tenth_of_the_plan_weighted_pruned_tokens():
    kept = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    pruned = torch.tensor([[1.0, 1.0], [3.0, -1.0], [0.5, 0.0]])
    plan = ref_sinkhorn([[ref_cos(k, q) for q in pruned.tolist()] for k in kept.tolist()])
    want = [
        [kept[i, d].item() + 0.1 * sum(plan[i][j] * pruned[j, d].item() for j in range(3))
         for d in range(2)]
        for i in range(2)
    ]
    assert torch.allclose(rtprune.merge_pruned(kept, pruned), torch.tensor(want), atol=1e-5)


def test_merge_with_nothing_pruned_returns_the_kept_tokens():
    kept = torch.randn(4, 8)
    assert torch.equal(rtprune.merge_pruned(kept, torch.empty(0, 8)), kept)


# ---- dynamic ratio -----------------------------------------------------------------------------


def test_sobel_fraction_on_a_white_patch_is_its_border_ring():
    white = torch.ones(3, 64, 64)
    assert rtprune.text_density(white, grid=1) == pytest.approx(252 / 4096)
    assert rtprune.text_density(torch.zeros(3, 64, 64), grid=1) == 0.0
    # Per-patch padding: a 1024 white view scores the ring in every one of its 16x16 patches.
    assert rtprune.text_density(torch.ones(3, 1024, 1024), grid=16) == pytest.approx(252 / 4096)


def test_sobel_fraction_matches_a_loop_reference_with_per_patch_padding():
    gen = torch.Generator().manual_seed(3)
    view = torch.zeros(3, 16, 16)
    view[:, :, 5:] = 0.8  # a vertical step edge crossing the left patches
    view[:, 10:, :] += torch.rand(6, 16, generator=gen) * 0.3
    gray = (0.299 * view[0] + 0.587 * view[1] + 0.114 * view[2]).tolist()
    want = 0.0
    for py in range(2):
        for px in range(2):
            patch = [row[px * 8 : px * 8 + 8] for row in gray[py * 8 : py * 8 + 8]]
            want += ref_edge_fraction(patch) / 4
    assert rtprune.text_density(view, grid=2) == pytest.approx(want, abs=1e-6)


def test_similarity_ratio_matches_a_loop_reference():
    gen = torch.Generator().manual_seed(5)
    feats = torch.randn(7, 5, generator=gen)
    rows = feats.tolist()
    per_token = [
        sum(ref_cos(rows[i], rows[j]) ** 2 for j in range(7) if j != i) / 6 for i in range(7)
    ]
    mean = sum(per_token) / 7
    assert rtprune.similarity_ratio(feats) == pytest.approx(1 - mean, abs=1e-6)
    identical = torch.ones(6, 4)
    assert rtprune.similarity_ratio(identical) == pytest.approx(0.0, abs=1e-6)


def test_similarity_ratio_of_a_single_token_is_one():
    assert rtprune.similarity_ratio(torch.randn(1, 8)) == 1.0


@pytest.mark.parametrize(
    ("r_txt", "r_sim", "want"), [(0, 0, 0), (1, 0, 1), (0.2, 0.5, 0.6), (0.06, 0.9, 0.906)]
)
def test_dynamic_ratio_is_the_probabilistic_or(r_txt, r_sim, want):
    assert rtprune.dynamic_keep_ratio(r_txt, r_sim) == pytest.approx(want)


def test_auto_ratio_stays_in_zero_one_on_random_inputs():
    gen = torch.Generator().manual_seed(7)
    layout = ImageLayout(8)
    for _ in range(5):
        feats = torch.randn(layout.length, 16, generator=gen)
        view = torch.rand(3, 512, 512, generator=gen) * 2 - 1
        record = rtprune.prune_image(feats, layout, "auto", global_view=view).record
        assert 0.0 <= record.ratio <= 1.0
        assert record.r_txt is not None and record.r_sim is not None
        assert record.visual_kept == max(1, math.floor(64 * record.ratio + 1e-9))


# ---- stage 1 and the whole block --------------------------------------------------------------


@pytest.mark.parametrize(
    ("keep", "kept"), [(0.84, 215), (0.6, 153), (0.4, 102), (0.29, 74), (0.001, 1)]
)
def test_kept_count_is_floor_of_n_times_keep_and_at_least_one(keep, kept):
    feats = torch.randn(ImageLayout(16).length, 12)
    assert rtprune.prune_image(feats, ImageLayout(16), keep).record.visual_kept == kept


@pytest.mark.parametrize(
    ("keep", "kept"), [(0.4, 40), (0.29, 29), (0.57, 57), (0.58, 58), (0.999, 99)]
)
def test_kept_count_floors_despite_float_error(keep, kept):
    # 100 * 0.29 == 28.999999999999996 in floats; the budget must still be 29 tokens.
    layout = ImageLayout(10)  # N = 100
    feats = torch.randn(layout.length, 6)
    assert rtprune.prune_image(feats, layout, keep, method="norm").record.visual_kept == kept


def test_top_norm_selection_keeps_the_largest_tokens_in_original_order():
    visual = torch.tensor([[1.0], [5.0], [0.5], [3.0], [4.0]])
    assert rtprune.select_top_norm(visual, 3).tolist() == [1, 3, 4]


def test_keep_one_returns_the_block_unchanged():
    layout = ImageLayout(16, 30, 20)
    feats = torch.randn(layout.length, 24)
    result = rtprune.prune_image(feats, layout, 1.0)
    assert torch.equal(result.embeddings, feats)
    assert torch.equal(result.positions, torch.arange(layout.length))
    assert result.record.newlines_collapsed == 0 and result.record.layout_kept == 47


def test_fully_pruned_rows_collapse_their_newlines():
    # rows of 4 tokens + NL: positions 0-3,4 | 5-8,9 | 10-13,14 | 15-18,19 | SEP 20
    layout = ImageLayout(4)
    feats = torch.ones(layout.length, 3)
    small = [5, 6, 7, 8, 10, 11, 12, 13]  # rows 1 and 2 get tiny norms: all of them pruned
    feats[small] = 0.01
    result = rtprune.prune_image(feats, layout, 0.5)  # K = 8: rows 0 and 3 survive
    # NLs 4, 9, 14 form one run of kept newlines: only the first (4) stays.
    assert result.positions.tolist() == [0, 1, 2, 3, 4, 15, 16, 17, 18, 19, 20]
    assert result.record.newlines_collapsed == 2
    assert result.record.visual_kept == 8
    assert result.record.layout_kept == 5 - 2


def test_a_pruned_first_row_keeps_its_leading_newline():
    layout = ImageLayout(2)  # 0,1,NL2 | 3,4,NL5 | SEP 6
    feats = torch.ones(layout.length, 2)
    feats[[0, 1]] = 0.1
    result = rtprune.prune_image(feats, layout, 0.5, method="norm")
    assert result.positions.tolist() == [2, 3, 4, 5, 6]


def test_a_pruned_last_row_drops_its_newline_but_keeps_the_separator():
    layout = ImageLayout(2)  # 0,1,NL2 | 3,4,NL5 | SEP 6
    feats = torch.ones(layout.length, 2)
    feats[[3, 4]] = 0.1
    result = rtprune.prune_image(feats, layout, 0.5)
    assert result.positions.tolist() == [0, 1, 2, 6]
    assert result.record.layout_kept == 2 and result.record.length_after == 4


def test_rtprune_block_matches_a_loop_reference():
    layout = ImageLayout(2)  # 0,1,NL2 | 3,4,NL5 | SEP 6
    visual = {0: [3.0, 0.0], 1: [0.0, 0.5], 3: [1.0, 1.0], 4: [0.2, -0.1]}
    feats = torch.tensor([visual.get(i, [7.0, 7.0 + i]) for i in range(layout.length)])
    # Norms 3, 0.5, 1.41, 0.22: keep 0.5 gives K = 2, so 0 and 3 stay; 1 and 4 are merged into them.
    kept, pruned = [visual[0], visual[3]], [visual[1], visual[4]]
    plan = ref_sinkhorn([[ref_cos(k, q) for q in pruned] for k in kept])
    merged = [
        [k[d] + 0.1 * sum(plan[i][j] * pruned[j][d] for j in range(2)) for d in range(2)]
        for i, k in enumerate(kept)
    ]
    result = rtprune.prune_image(feats, layout, 0.5)
    assert result.positions.tolist() == [0, 2, 3, 5, 6]
    assert torch.allclose(result.embeddings[[0, 2]], torch.tensor(merged), atol=1e-5)
    assert torch.equal(result.embeddings[[1, 3, 4]], feats[[2, 5, 6]])  # NL and SEP rows untouched

    half = rtprune.prune_image(feats.to(torch.bfloat16), layout, 0.5)
    assert half.embeddings.dtype == torch.bfloat16
    assert torch.equal(half.positions, result.positions)
    assert torch.allclose(half.embeddings.float(), result.embeddings, rtol=1e-2)


def test_record_of_a_fixed_keep():
    layout = ImageLayout(4, local_rows=2, local_cols=2)  # N = 4 + 16 = 20, layout tokens 2 + 4 + 1
    record = rtprune.prune_image(torch.randn(layout.length, 3), layout, 0.5, method="norm").record
    assert (record.visual_total, record.visual_kept, record.layout_total) == (20, 10, 7)
    assert (record.ratio, record.setting, record.method) == (0.5, "0.5", "norm")
    assert record.r_txt is None and record.r_sim is None
    assert record.length_before == layout.length == 27
    assert record.length_after == 10 + 7 - record.newlines_collapsed


def test_auto_keep_without_a_global_view_is_refused():
    with pytest.raises(ValueError, match="global view"):
        rtprune.prune_image(torch.randn(ImageLayout(2).length, 3), ImageLayout(2), "auto")


@pytest.mark.parametrize("keep", [0.0, -0.5, 1.5, float("nan")])
def test_keep_outside_zero_one_is_refused(keep):
    with pytest.raises(ValueError, match="keep must be"):
        rtprune.prune_image(torch.randn(ImageLayout(2).length, 3), ImageLayout(2), keep)


def test_wrong_feature_length_and_unknown_method_are_refused():
    with pytest.raises(ValueError, match="layout expects 7"):
        rtprune.prune_image(torch.randn(8, 3), ImageLayout(2), 0.5)
    with pytest.raises(ValueError, match="method"):
        rtprune.prune_image(torch.randn(7, 3), ImageLayout(2), 0.5, method="top")  # type: ignore
    with pytest.raises(ValueError, match="both be 0"):
        ImageLayout(16, local_rows=10)


def test_prune_pages_handles_each_page_with_its_own_layout():
    # The batch loop lives in the runtime's hook (`prune_pages`); each page is `prune_image` alone.
    from ocrprune.config import PruneConfig
    from ocrprune.runtime.hf.clock import StageClock
    from ocrprune.runtime.hf.prune_hook import prune_pages

    layouts = [ImageLayout(2), ImageLayout(4, local_rows=2, local_cols=2)]
    feats = [torch.randn(layout.length, 5) for layout in layouts]
    views = torch.zeros(2, 3, 64, 64)
    results = prune_pages(feats, layouts, views, PruneConfig(keep="auto"), StageClock(torch.device("cpu")))
    assert [r.record.visual_total for r in results] == [4, 20]
    assert [r.record.r_txt for r in results] == [0.0, 0.0]  # a mid-grey view has no edges
    for result, layout, block in zip(results, layouts, feats):
        single = rtprune.prune_image(block, layout, "auto", global_view=views[0])
        assert torch.equal(result.positions, single.positions)


def test_gundam_ranks_local_and_global_tokens_as_one_pool():
    # local 0,1,NL2,3,4,NL5 | global 6,7,NL8,9,10,NL11 | SEP 12
    layout = ImageLayout(2, local_rows=2, local_cols=2)
    feats = torch.ones(layout.length, 4) * 0.1
    feats[[6, 7, 9, 10]] = 2.0
    result = rtprune.prune_image(feats, layout, 0.5, method="norm")
    assert result.positions.tolist() == [2, 6, 7, 8, 9, 10, 11, 12]
    assert result.record.newlines_collapsed == 1


def test_norm_method_keeps_rtprune_positions_without_merging():
    layout = ImageLayout(8)
    feats = torch.randn(layout.length, 16, generator=torch.Generator().manual_seed(2))
    merged = rtprune.prune_image(feats, layout, 0.4)
    plain = rtprune.prune_image(feats, layout, 0.4, method="norm")
    assert torch.equal(merged.positions, plain.positions)
    assert torch.equal(plain.embeddings, feats[plain.positions])
    assert not torch.equal(merged.embeddings, plain.embeddings)


def test_random_method_is_seeded_and_uses_the_same_budget():
    layout = ImageLayout(8)
    feats = torch.randn(layout.length, 16)
    runs = [
        rtprune.prune_image(
            feats, layout, 0.4, method="random", generator=torch.Generator().manual_seed(seed)
        )
        for seed in (11, 11, 12)
    ]
    assert torch.equal(runs[0].positions, runs[1].positions)
    assert not torch.equal(runs[0].positions, runs[2].positions)
    assert {r.record.visual_kept for r in runs} == {25}


def test_gapped_positions_keep_original_ids_and_continue_after_the_block():
    positions = rtprune.gapped_positions(1, torch.tensor([0, 3, 4, 9]), 3, 10)
    assert positions.tolist() == [0, 1, 4, 5, 10, 11, 12, 13]
    assert (positions[1:] > positions[:-1]).all()


@pytest.mark.slow  # a process importing torch; fast: test_house.py::test_rtprune_imports_torch_and_the_standard_library_only
def test_rtprune_imports_only_torch():
    code = (
        "import sys, ocrprune.rtprune;"
        "names = ('transformers', 'PIL', 'ocrprune.config', 'ocrprune.records');"
        "bad = [m for m in names if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
