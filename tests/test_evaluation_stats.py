"""Interval and paired-test numerics against published values and hand computation."""

from __future__ import annotations

import pandas as pd
import pytest

from fitsense.evaluation.stats import intervals_separate, mcnemar_exact, mean_interval, rate_intervals, wilson_interval


@pytest.mark.parametrize("k, n, low, high", [
    (81, 263, 0.2553, 0.3662),  # Newcombe (1998), Statistics in Medicine 17:857, table I
    (8, 10, 0.4902, 0.9433),
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (1, 1, 0.2065, 1.0),
])
def test_wilson_interval_matches_published_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)
    assert lo <= k / n <= hi


def test_wilson_interval_edge_cases():
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    narrow, wide = wilson_interval(50, 100), wilson_interval(5, 10)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]  # more data, tighter interval


def test_mcnemar_exact_uses_the_discordant_pairs():
    # 10 queries only A gets right, 2 only B, 8 both, 5 neither
    a = [True] * 10 + [False] * 2 + [True] * 8 + [False] * 5
    b = [False] * 10 + [True] * 2 + [True] * 8 + [False] * 5
    t = mcnemar_exact(a, b)
    assert (t["a_only"], t["b_only"], t["n"]) == (10, 2, 25)
    assert t["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert t["diff"] == pytest.approx(18 / 25 - 10 / 25)
    assert mcnemar_exact([True, False], [True, False])["p_value"] == 1.0  # no discordant pair
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])


def test_rate_intervals_count_over_the_right_rows():
    frame = pd.DataFrame({"valid": [True, True, False, True], "adherent": [True, False, False, True],
                          "teacher_structure_match": [True] * 4,
                          "referral_required": [True, True, False, False], "referral_given": [True, False, True, False]})
    r = rate_intervals(frame)
    assert (r["validity"]["k"], r["validity"]["n"]) == (3, 4)
    assert (r["referral_recall"]["k"], r["referral_recall"]["n"]) == (1, 2)
    assert (r["referral_precision"]["k"], r["referral_precision"]["n"]) == (1, 2)
    assert r["adherence"]["ci95"] == pytest.approx(list(wilson_interval(2, 4)))


def test_mean_interval_and_separation():
    assert mean_interval([0.5]) is None
    lo, hi = mean_interval([0.0, 1.0] * 50)
    assert lo == pytest.approx(0.5 - 1.959964 * 0.502519 / 10, abs=1e-4) and hi > 0.5
    assert intervals_separate([0.1, 0.2], [0.3, 0.4]) and not intervals_separate([0.1, 0.35], [0.3, 0.4])
    assert not intervals_separate(None, [0.3, 0.4])
