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
    assert "memory per further concurrent utterance 10 MB" in table  # from the first round alone


def test_memory_per_further_utterance_comes_from_the_first_round():
    """Later rounds start with what the largest level left resident: their one-client peak is no baseline."""
    rounds = [_level(1, 1, 0.8), _level(4, 1, 1.7), _level(1, 2, 0.8), _level(4, 2, 1.7)]
    rounds[2]["peak_rss_gb"] = rounds[3]["peak_rss_gb"] = 2.5
    assert "memory per further concurrent utterance 10 MB" in concurrency_table(rounds)  # 30 MB / 3


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
