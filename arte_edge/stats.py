"""Accuracy with honest intervals, and paired comparisons on the same held-out items."""

from __future__ import annotations

import math
from collections.abc import Sequence


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (better than the normal one near 0 and 1)."""
    if n == 0:
        return 0.0, 0.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_summary(flags: Sequence[bool]) -> dict[str, float | int]:
    """Accuracy, 95% interval and n, all as fractions in [0, 1]."""
    n = len(flags)
    k = sum(bool(f) for f in flags)
    low, high = wilson_interval(k, n)
    return {"accuracy": k / n if n else 0.0, "ci_low": low, "ci_high": high, "n_eval": n}


def mcnemar_p(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Exact two-sided McNemar p-value for paired correctness of two systems on the same items."""
    from scipy.stats import binomtest

    if len(a) != len(b):
        raise ValueError("paired test needs the same items for both systems")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
