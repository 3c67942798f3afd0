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


def mcnemar_worse_p(only_a: int, only_b: int) -> float:
    """Exact one-sided McNemar p that system ``a`` is worse than ``b``: P(X ≥ only_b), X ~ Bin(only_a + only_b, 1/2),
    from the discordant counts (``only_a``: items only ``a`` got right; ``only_b``: only ``b``)."""
    from scipy.stats import binomtest

    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_b, only_a + only_b, 0.5, alternative="greater").pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def paired_bootstrap(a: Sequence[bool], b: Sequence[bool], *, n_boot: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """Accuracy difference ``mean(a) - mean(b)`` on the same items and its percentile bootstrap interval
    (items resampled with replacement, pairs kept together)."""
    import numpy as np

    if len(a) != len(b) or not a:
        raise ValueError("paired bootstrap needs the same, non-empty items for both systems")
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(n_boot, len(diff)))
    means = diff[idx].mean(axis=1)
    tail = (1 - level) / 2
    return float(diff.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def mcnemar_mde(n: int, discordant: float, *, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Smallest accuracy difference a paired (McNemar) test on ``n`` items detects with ``power`` at ``alpha``,
    given the observed share of discordant items (normal approximation, Connor 1987). None when undefined."""
    from scipy.stats import norm

    if n <= 0 or discordant <= 0:
        return None
    za, zb = norm.ppf(1 - alpha / 2), norm.ppf(power)
    delta = (za + zb) * math.sqrt(discordant / n)
    for _ in range(50):  # fixed point of n·δ² = (za·√d + zb·√(d − δ²))²
        inner = max(discordant - delta * delta, 0.0)
        delta = (za * math.sqrt(discordant) + zb * math.sqrt(inner)) / math.sqrt(n)
    return min(delta, 1.0)


def mcnemar_items_needed(delta: float, discordant: float, *, alpha: float = 0.05,
                         power: float = 0.8) -> int | None:
    """Paired items a McNemar test needs to detect an accuracy difference ``delta`` with ``power`` at ``alpha``
    when a share ``discordant`` of items differ between the arms (Connor 1987; the inverse of
    :func:`mcnemar_mde`). None when undefined (no difference, no discordance, or ``delta² > discordant``)."""
    from scipy.stats import norm

    delta = abs(delta)
    if delta <= 0 or discordant <= 0 or delta * delta > discordant:
        return None
    za, zb = norm.ppf(1 - alpha / 2), norm.ppf(power)
    root = za * math.sqrt(discordant) + zb * math.sqrt(discordant - delta * delta)
    return math.ceil((root / delta) ** 2)


def paired_comparison(a: Sequence[bool], b: Sequence[bool], *, seed: int = 0) -> dict[str, float | int | None]:
    """Everything a report says about arm ``a`` against arm ``b`` on the same items: the difference, its bootstrap
    95% interval, the exact McNemar p (unadjusted), the discordant counts, the minimum detectable difference and
    ``n_needed``: the items a rerun would need to detect a true difference of the size observed here at the
    discordance seen (80% power; a planning figure for the next run, not evidence about this one)."""
    diff, low, high = paired_bootstrap(a, b, seed=seed)
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    discordant = (only_a + only_b) / len(a)
    return {"n": len(a), "diff": diff, "diff_low": low, "diff_high": high, "p": mcnemar_p(a, b),
            "only_a": only_a, "only_b": only_b, "mde": mcnemar_mde(len(a), discordant),
            "n_needed": mcnemar_items_needed(diff, discordant)}
