import pytest

from arte_edge.stats import accuracy_summary, mcnemar_p, wilson_interval


def test_wilson_matches_reference_values() -> None:
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(0.1611, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 0.0)


def test_accuracy_summary() -> None:
    s = accuracy_summary([True, False, True, True])
    assert s["accuracy"] == 0.75 and s["n_eval"] == 4 and s["ci_low"] < 0.75 < s["ci_high"]


def test_mcnemar() -> None:
    a = [True] * 10 + [False] * 10
    assert mcnemar_p(a, a) == 1.0
    b = [False] * 10 + [False] * 10
    assert mcnemar_p(a, b) == pytest.approx(0.00195, abs=1e-4)
    with pytest.raises(ValueError):
        mcnemar_p([True], [True, False])


def test_holm_matches_known_values() -> None:
    from arte_edge.stats import holm

    # statsmodels.stats.multitest.multipletests([0.01, 0.04, 0.03, 0.005], method="holm")[1]
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5] and holm([0.6, 0.7]) == [1.0, 1.0]


def test_paired_bootstrap_interval_covers_the_difference_and_pairs_items() -> None:
    from arte_edge.stats import paired_bootstrap

    a = [True, False] * 50
    diff, low, high = paired_bootstrap(a, a)
    assert (diff, low, high) == (0.0, 0.0, 0.0)  # identical systems: every resample differs by nothing
    b = [True] * 30 + [False] * 70
    c = [True] * 50 + [False] * 50
    diff, low, high = paired_bootstrap(c, b, seed=1)
    assert diff == pytest.approx(0.2) and low < 0.2 < high
    # 20 discordant items, all favouring c: the percentile interval is about 0.2 ± 1.96·sqrt(0.2·0.8/100)
    assert 0.11 < low < 0.15 and 0.25 < high < 0.29


def test_mcnemar_mde_shrinks_with_n_and_matches_the_normal_formula() -> None:
    from arte_edge.stats import mcnemar_mde

    assert mcnemar_mde(100, 0.3) == pytest.approx(0.1517, abs=2e-3)
    assert mcnemar_mde(400, 0.3) < mcnemar_mde(100, 0.3) / 1.9
    assert mcnemar_mde(100, 0.0) is None


def test_items_needed_inverts_the_detectable_difference() -> None:
    from arte_edge.stats import mcnemar_items_needed, mcnemar_mde

    # PERsD vs StanD on HumanEval: 26 of 164 discordant, observed -4.9 pt (8 more for StanD)
    needed = mcnemar_items_needed(-8 / 164, 26 / 164)
    assert needed is not None and 450 < needed < 560
    assert mcnemar_mde(needed, 26 / 164) == pytest.approx(8 / 164, rel=0.01)  # the MDE at that n is that size
    for n, d in ((100, 0.3), (400, 0.1), (2000, 0.05)):
        delta = mcnemar_mde(n, d)
        assert mcnemar_items_needed(delta, d) in (n, n + 1)  # round trip (ceil)
    assert mcnemar_items_needed(0.0, 0.2) is None
    assert mcnemar_items_needed(0.1, 0.0) is None


def test_paired_comparison_plans_the_next_run() -> None:
    from arte_edge.stats import paired_comparison

    a = [True] * 30 + [False] * 70
    b = [True] * 25 + [False] * 75  # 5 items only a: +5 pt, 5% discordant
    row = paired_comparison(a, b)
    assert row["mde"] > 0.05 and row["n_needed"] > 100  # not detectable here, so a rerun needs more items
    assert paired_comparison(a, a)["n_needed"] is None
