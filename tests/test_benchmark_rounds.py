"""The server benchmarks' rounds: each level (or mode) is reported by its median round, so one slow minute
of a shared host does not decide a ratio."""

from __future__ import annotations

from benchmarks.benchmark import answer_table, concurrency_table, median_rounds


def _level(clients: int, round_index: int, audio_s_per_s: float) -> dict:
    return {
        "mode": "batched",
        "clients": clients,
        "round": round_index,
        "first_audio_s": [0.2] * clients,
        "rtf": [1.0] * clients,
        "audio_s_per_s": audio_s_per_s,
        "peak_rss_gb": 2.0 + clients / 100,
        "idle_rss_gb": 1.9,
    }


def test_each_level_is_reported_by_its_median_round_and_the_gain_by_the_medians():
    rounds = [_level(1, 1, 0.60), _level(2, 1, 1.40), _level(1, 2, 0.90), _level(2, 2, 1.30)]
    rounds += [_level(1, 3, 0.80), _level(2, 3, 1.20)]
    medians = median_rounds(rounds)
    assert [(r["clients"], r["audio_s_per_s"], r["rounds"]) for r in medians] == [
        (1, 0.80, [0.60, 0.90, 0.80]),
        (2, 1.30, [1.40, 1.30, 1.20]),
    ]
    table = concurrency_table(rounds)
    assert "| batched | 2 |" in table and "| 1.30 | 1.62x |" in table  # 1.30 / 0.80, not 1.40 / 0.60
    assert "1.40, 1.30, 1.20 |" in table
    assert "memory per further concurrent utterance 10 MB" in table  # (2.02 - 2.01) GB, 1 client more


def test_memory_per_further_utterance_is_the_median_round_of_growth_above_the_idle_server():
    """Each level starts from the idle server (its release ran), at a resident size of its own: a round's
    figure is what four clients took above it against what one took; one odd round does not decide."""
    rounds = [_level(1, r, 0.8) for r in (1, 2, 3)]
    rounds += [_level(4, r, 1.7) for r in (1, 2, 3)]
    for one in rounds[:3]:
        one["idle_rss_gb"], one["peak_rss_gb"] = 2.0, 2.1  # one client: +100 MB (102.4)
    fours = rounds[3:]
    fours[0]["idle_rss_gb"], fours[0]["peak_rss_gb"] = 2.0, 2.16  # +60 MB over one: 20 a further
    fours[1]["idle_rss_gb"], fours[1]["peak_rss_gb"] = 2.3, 2.49  # started higher; +90 MB: 30
    fours[2]["idle_rss_gb"], fours[2]["peak_rss_gb"] = 2.0, 2.4  # +300 MB: 100
    table = concurrency_table(rounds)
    assert "memory per further concurrent utterance 31 MB" in table  # the median: 0.09 GB x 1024 / 3


def test_memory_per_further_utterance_needs_the_idle_baseline():
    rounds = [_level(1, 1, 0.8), _level(4, 1, 1.7)]
    for r in rounds:
        del r["idle_rss_gb"]
    assert "memory per further" not in concurrency_table(rounds)


def test_one_round_keeps_the_table_as_it_was():
    table = concurrency_table([_level(1, 1, 0.80), _level(2, 1, 1.20)])
    assert "each round" not in table and "| 1.20 | 1.50x | 2.02 |" in table


def test_answer_rounds_end_with_the_median_stalls_of_each_mode():
    def run(mode: str, stall: float) -> dict:
        return {"mode": mode, "first_audio_s": 0.5, "audio_s": 15.36, "stall_s": stall, "last_audio_s": 14.0}

    results = [run("batched", 1.5), run("max-batch 1", 3.0), run("batched", 1.2), run("max-batch 1", 2.0)]
    results += [run("batched", 2.5), run("max-batch 1", 2.4)]
    assert answer_table(results).endswith("median stalls: batched 1.5 s, max-batch 1 2.4 s (0.62x)")
    assert "median" not in answer_table(results[:2])
