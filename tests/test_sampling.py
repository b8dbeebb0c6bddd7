"""Drawing a code: the distribution Hugging Face's warpers give, each row from its own random stream."""

from __future__ import annotations

import torch

from wyoming_qwen3tts.engine.loop import _pick_rows

DRAWS = 40_000


def warped_probs(logits: torch.Tensor, top_k: int, top_p: float, temperature: float) -> torch.Tensor:
    """The reference: Hugging Face's temperature, top-k and top-p warpers on the whole vocabulary, then
    the softmax a draw is made from."""
    logits = logits / temperature
    kth = torch.topk(logits, top_k).values[-1]
    logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative <= 1 - top_p
        remove[-1] = False
        logits = logits.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    return logits.softmax(-1)


def drawn_frequencies(logits: torch.Tensor, top_k: int, top_p: float, temperature: float) -> torch.Tensor:
    rows = logits.expand(DRAWS, -1)
    generator = [torch.Generator().manual_seed(7)] * DRAWS
    ids = _pick_rows(rows, True, top_k, top_p, temperature, generator)
    return torch.bincount(torch.tensor(ids), minlength=logits.shape[-1]).double() / DRAWS


def test_draws_follow_the_warped_distribution():
    logits = torch.randn(2048, generator=torch.Generator().manual_seed(1)) * 2
    for top_k, top_p, temperature in ((50, 1.0, 0.9), (20, 0.8, 1.3), (5, 1.0, 0.5)):
        expected = warped_probs(logits, top_k, top_p, temperature).double()
        got = drawn_frequencies(logits, top_k, top_p, temperature)
        assert got[expected == 0].sum() == 0, "a code outside the warped candidates was drawn"
        # Each frequency is a binomial estimate: within 5 standard deviations of its probability.
        sigma = (expected * (1 - expected) / DRAWS).sqrt()
        assert ((got - expected).abs() <= 5 * sigma + 1e-9).all(), (top_k, top_p, temperature)


def test_suppressed_codes_are_never_drawn():
    logits = torch.randn(64)
    logits[:40] = float("-inf")  # fewer candidates left than top_k
    ids = _pick_rows(logits.expand(500, -1), True, 50, 1.0, 0.9, [None] * 500)
    assert min(ids) >= 40


def test_a_row_draws_the_same_alone_or_beside_others():
    logits = torch.randn(3, 2048)
    together = _pick_rows(
        logits, True, 50, 0.95, 0.9, [torch.Generator().manual_seed(seed) for seed in (1, 2, 3)]
    )
    alone = [
        _pick_rows(logits[row : row + 1], True, 50, 0.95, 0.9, [torch.Generator().manual_seed(seed)])[0]
        for row, seed in enumerate((1, 2, 3))
    ]
    assert together == alone
    streams = [torch.Generator().manual_seed(seed) for seed in (1, 2, 3)]
    draws = [_pick_rows(logits, True, 50, 1.0, 0.9, streams) for _ in range(50)]
    assert len({tuple(draw) for draw in draws}) > 1  # the streams move on: not the same draw every time


def test_greedy_takes_each_rows_argmax():
    logits = torch.randn(4, 2048)
    assert _pick_rows(logits, False, 50, 1.0, 0.9, [None] * 4) == logits.argmax(dim=-1).tolist()
