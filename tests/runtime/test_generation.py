"""Decoding helpers: the windowed n-gram ban with its whitelist, and the per-row position budget."""

from __future__ import annotations

import torch

from ocrprune.runtime.hf.generation import PositionBudget, WindowedNoRepeatNGram


def reference_banned(generated: list[int], n: int, window: int, whitelist: set[int]) -> set[int]:
    """The official processor, written plainly: n-grams in the last `window` tokens whose first
    n-1 tokens equal the current suffix ban their last token."""
    if len(generated) < n:
        return set()
    prefix = tuple(generated[-(n - 1):])
    start = max(0, len(generated) - window)
    banned = set()
    for i in range(start, len(generated) - n + 1):
        gram = tuple(generated[i : i + n])
        if gram[:-1] == prefix:
            banned.add(gram[-1])
    return banned - whitelist


def test_ngram_ban_matches_a_plain_loop_reference_on_random_sequences():
    generator = torch.Generator().manual_seed(0)
    vocab, prompt = 12, 5
    for trial in range(40):
        length = int(torch.randint(1, 60, (1,), generator=generator))
        batch = torch.randint(0, 4, (3, prompt + length), generator=generator)  # small alphabet: repeats
        n, window, whitelist = 3, 20, {2}
        processor = WindowedNoRepeatNGram(n, window, prompt, whitelist=sorted(whitelist))
        scores = processor(batch, torch.zeros(3, vocab))
        for row in range(3):
            expected = reference_banned(batch[row, prompt:].tolist(), n, window, whitelist)
            got = {int(t) for t in torch.nonzero(scores[row] == float("-inf")).flatten()}
            assert got == expected, (trial, row)


def test_ngram_ban_ignores_the_prompt_and_spares_whitelisted_table_tokens():
    td, other = 9, 4
    prompt = [td, other, td, other]  # a repeat inside the prompt must not count
    generated = [td, other, td]  # the 2-gram (td, other) was seen: `other` is banned after td
    ids = torch.tensor([prompt + generated])
    scores = WindowedNoRepeatNGram(2, 90, len(prompt))(ids, torch.zeros(1, 10))
    assert scores[0, other] == float("-inf")
    scores = WindowedNoRepeatNGram(2, 90, len(prompt), whitelist=[other])(ids, torch.zeros(1, 10))
    assert torch.isfinite(scores).all()
    scores = WindowedNoRepeatNGram(2, 90, len(prompt) + 1)(ids, torch.zeros(1, 10))
    assert torch.isfinite(scores).all()


def test_position_budget_stops_each_row_at_its_own_cap():
    criterion = PositionBudget([2, 5], prompt_length=10)
    assert criterion(torch.zeros(2, 11, dtype=torch.long), torch.zeros(2, 3)).tolist() == [False, False]
    assert criterion(torch.zeros(2, 12, dtype=torch.long), torch.zeros(2, 3)).tolist() == [True, False]
    assert criterion(torch.zeros(2, 15, dtype=torch.long), torch.zeros(2, 3)).tolist() == [True, True]
