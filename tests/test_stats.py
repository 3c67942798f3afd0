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
