"""Paired per-case comparison of two methods scored on the same test cases.

The unit of pairing is the test case: each method's per-case score is first averaged over its
training seeds (:func:`mean_over_seeds`), then the two methods are compared on the cases both
scored. :func:`paired_comparison` gives the mean difference with a seeded percentile-bootstrap
interval (cases resampled with replacement) and the two-sided Wilcoxon signed-rank p-value
(``scipy.stats.wilcoxon``: exact for small samples without ties or zeros, normal approximation
otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

BOOTSTRAP_SAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedComparison:
    """Method A minus method B over paired cases.

    Attributes:
        n: number of paired cases.
        mean_difference: mean of ``a - b`` over the cases.
        ci_low, ci_high: percentile-bootstrap interval of the mean difference.
        p_value: two-sided Wilcoxon signed-rank p-value (1.0 when every difference is zero).
    """

    n: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float


def mean_over_seeds(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per-case mean of one method's scores over its runs (seeds); cases missing from a run are
    averaged over the runs that have them.

    Args:
        runs: one ``{case_id: score}`` mapping per seed.

    Returns:
        ``{case_id: mean score}``.
    """
    collected: dict[str, list[float]] = {}
    for run in runs:
        for case_id, score in run.items():
            collected.setdefault(case_id, []).append(float(score))
    return {case_id: float(np.mean(scores)) for case_id, scores in sorted(collected.items())}


def bootstrap_interval(
    differences: Sequence[float],
    n_samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``differences`` (resampling cases with replacement).

    Args:
        differences: per-case differences, at least one.
        n_samples: bootstrap resamples.
        seed: seed of ``numpy.random.default_rng``.
        confidence: coverage of the interval, in (0, 1).

    Returns:
        ``(low, high)``: the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the
        resampled means.
    """
    values = np.asarray(differences, dtype=np.float64)
    if values.size == 0:
        raise ValueError("bootstrap_interval needs at least one difference")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_samples, values.size))].mean(axis=1)
    low, high = np.quantile(means, [(1.0 - confidence) / 2, (1.0 + confidence) / 2])
    return float(low), float(high)


def paired_comparison(
    a: Mapping[str, float],
    b: Mapping[str, float],
    n_samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> PairedComparison:
    """Compare method ``a`` with method ``b`` on the cases both scored.

    Args:
        a, b: ``{case_id: score}`` (e.g. Dice averaged over seeds, :func:`mean_over_seeds`).
        n_samples: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        The comparison of ``a - b``.

    Raises:
        ValueError: no case in common.
    """
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("paired_comparison: the two methods share no case")
    differences = np.asarray([a[case] - b[case] for case in common], dtype=np.float64)
    low, high = bootstrap_interval(differences, n_samples, seed)
    if np.all(differences == 0):
        p_value = 1.0
    else:
        p_value = float(stats.wilcoxon(differences, alternative="two-sided").pvalue)
    return PairedComparison(len(common), float(differences.mean()), low, high, p_value)
