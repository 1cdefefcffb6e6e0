"""Paired statistics against closed forms."""

from __future__ import annotations

import itertools

import pytest

from h2aseg.evaluation.stats import bootstrap_interval, mean_over_seeds, paired_comparison


def test_constant_differences_give_a_zero_width_interval() -> None:
    a = {f"case{i}": 0.5 + 0.01 * i for i in range(12)}
    b = {case: score - 0.2 for case, score in a.items()}
    result = paired_comparison(a, b)
    assert result.n == 12
    assert result.mean_difference == pytest.approx(0.2)
    assert result.ci_low == pytest.approx(0.2) and result.ci_high == pytest.approx(0.2)


def test_bootstrap_of_two_cases_matches_its_exact_distribution() -> None:
    """Resampling [0, 1] twice gives means 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4: the 2.5 % and
    97.5 % quantiles are 0 and 1, and 1/2 is the median."""
    assert bootstrap_interval([0.0, 1.0], n_samples=20_000) == (0.0, 1.0)
    assert bootstrap_interval([0.0, 1.0], n_samples=20_000, confidence=0.4) == (0.5, 0.5)


def test_wilcoxon_matches_the_exact_null_distribution() -> None:
    """Differences 1, 2, -3, 4, 5: ranks 1..5, W- = 3. Under the null every sign pattern of the ranks
    is equally likely; P(W <= 3) = #{subsets of 1..5 with sum <= 3} / 32 = 5/32, two-sided 10/32."""
    differences = [1.0, 2.0, -3.0, 4.0, 5.0]
    ranks = range(1, 6)
    at_most_3 = sum(
        1 for size in range(6) for subset in itertools.combinations(ranks, size) if sum(subset) <= 3
    )
    assert at_most_3 == 5
    a = {f"c{i}": d for i, d in enumerate(differences)}
    b = dict.fromkeys(a, 0.0)
    assert paired_comparison(a, b).p_value == pytest.approx(2 * at_most_3 / 32)


def test_pairing_uses_common_cases_after_averaging_seeds() -> None:
    seeds_a = [{"x": 0.2, "y": 0.4}, {"x": 0.4, "y": 0.6, "z": 1.0}]
    assert mean_over_seeds(seeds_a) == pytest.approx({"x": 0.3, "y": 0.5, "z": 1.0})
    result = paired_comparison(mean_over_seeds(seeds_a), {"x": 0.3, "y": 0.3})
    assert result.n == 2 and result.mean_difference == pytest.approx(0.1)
    assert paired_comparison({"x": 0.5}, {"x": 0.5}).p_value == 1.0
    with pytest.raises(ValueError, match="share no case"):
        paired_comparison({"x": 0.5}, {"y": 0.5})
