"""Decoding helpers that make `generate` behave as the official DeepSeek-OCR pipeline does.

- A windowed no-repeat n-gram ban over the generated tokens (n=30, window 90) with `<td>`/`</td>`
  whitelisted, as the official vLLM scripts use (runtime doc §1.7); the native transformers
  processor has no whitelist.
- A per-row position budget: pruning frees no positions (kept tokens keep their original ids), so a
  page may generate only until its unpruned prompt length plus new tokens reaches 8192.
- A first-step hook that marks the end of prefill, so the report can split prefill from decode.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria


class WindowedNoRepeatNGram(LogitsProcessor):
    """Ban a token that would repeat an n-gram seen in the last `window` generated tokens.

    Only generated tokens count (the official processor sees output ids only). Vectorised over the
    batch and the window: no Python loop over tokens.
    """

    def __init__(self, ngram_size: int, window: int, prompt_length: int, whitelist: Sequence[int] = ()) -> None:
        if ngram_size < 2 or window < ngram_size:
            raise ValueError("need ngram_size >= 2 and window >= ngram_size")
        self.n = ngram_size
        self.window = window
        self.prompt_length = prompt_length
        self.whitelist = tuple(int(t) for t in whitelist)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :]
        if generated.shape[1] < self.n:
            return scores
        recent = generated[:, -self.window :]  # [B, W]
        grams = recent.unfold(1, self.n, 1)  # [B, W-n+1, n]
        prefix = generated[:, -(self.n - 1) :].unsqueeze(1)  # [B, 1, n-1]
        match = (grams[:, :, :-1] == prefix).all(-1)  # [B, W-n+1]
        if not bool(match.any()):
            return scores
        counts = torch.zeros(scores.shape, dtype=torch.int32, device=scores.device)
        counts.scatter_add_(1, grams[:, :, -1], match.to(torch.int32))
        banned = counts > 0
        if self.whitelist:
            banned[:, list(self.whitelist)] = False
        return scores.masked_fill(banned, float("-inf"))


class PositionBudget(StoppingCriteria):
    """Stop row i after `budgets[i]` new tokens (each page's own cap within 8192 positions)."""

    def __init__(self, budgets: Sequence[int], prompt_length: int) -> None:
        self.budgets = torch.tensor(list(budgets), dtype=torch.long)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        produced = input_ids.shape[1] - self.prompt_length
        return (produced >= self.budgets.to(input_ids.device)).to(torch.bool)


class Deadline(StoppingCriteria):
    """Stop the whole batch once `seconds` have passed; rows without EOS then time out."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()
        self.fired = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        done = time.perf_counter() - self.start >= self.seconds
        self.fired = self.fired or done
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class FirstStepClock(LogitsProcessor):
    """Mark when the first logits arrive: the end of prefill. `mark` is the device clock's (a CUDA
    event on a GPU, so taking it does not synchronise)."""

    def __init__(self, mark: Callable[[], Any]) -> None:
        self.mark = mark
        self.first: Any = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.first is None:
            self.first = self.mark()
        return scores
