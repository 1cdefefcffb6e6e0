"""Patient-level splits: no leakage, reproducible from the saved JSON, k folds around a fixed test part."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from h2aseg.data.layouts import Case
from h2aseg.data.splits import PARTS, Split, make_folds, make_split


def _cohort(n_patients: int, studies_every: int = 3) -> list[Case]:
    """``n_patients`` patients; every ``studies_every``-th has three studies."""
    cases = []
    for p in range(n_patients):
        for s in range(3 if p % studies_every == 0 else 1):
            path = Path(f"/data/P{p:02d}/S{s}")
            cases.append(Case(f"P{p:02d}_S{s}", f"P{p:02d}", path / "ct.nii.gz", path / "pet.nii.gz"))
    return cases


def _patients(split: Split, part: str) -> set[str]:
    return {case_id.split("_")[0] for case_id in getattr(split, part)}


def test_split_is_by_patient_and_covers_every_case() -> None:
    cases = _cohort(20)
    split = make_split(cases, seed=0)
    assert sorted(split.train + split.val + split.test) == sorted(c.case_id for c in cases)
    parts = [_patients(split, part) for part in PARTS]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert [len(p) for p in parts] == [12, 4, 4]  # 6:2:2 of 20 patients
    assert split.seed == 0 and split.ratios == (6.0, 2.0, 2.0) and split.fold is None


def test_split_is_reproducible_for_a_seed() -> None:
    cases = _cohort(20)
    assert make_split(cases, seed=7) == make_split(list(reversed(cases)), seed=7)
    assert make_split(cases, seed=7) != make_split(cases, seed=8)


@pytest.mark.parametrize("n_patients", [3, 4, 5, 7])
def test_every_part_is_non_empty_with_three_patients_or_more(n_patients: int) -> None:
    split = make_split(_cohort(n_patients), seed=1)
    assert all(getattr(split, part) for part in PARTS)


def test_tiny_cohorts_and_zero_ratios() -> None:
    assert make_split(_cohort(1), seed=0).train == ["P00_S0", "P00_S1", "P00_S2"]
    no_test = make_split(_cohort(10), seed=0, ratios=(8, 2, 0))
    assert no_test.test == [] and len(_patients(no_test, "val")) == 2
    with pytest.raises(ValueError, match="ratios"):
        make_split(_cohort(10), seed=0, ratios=(1, -1, 1))
    with pytest.raises(ValueError, match="no cases"):
        make_split([], seed=0)


def test_saved_split_reloads_identically(tmp_path: Path) -> None:
    split = make_split(_cohort(12), seed=3)
    path = tmp_path / "runs" / "split.json"
    split.save(path)
    content = json.loads(path.read_text())
    assert content["seed"] == 3 and content["ratios"] == [6.0, 2.0, 2.0]
    assert Split.load(path) == split
    assert make_split(_cohort(12), seed=content["seed"], ratios=content["ratios"]) == split
    assert list(tmp_path.glob("runs/.*")) == []


def test_folds_share_the_test_part_and_partition_the_rest() -> None:
    cases = _cohort(22)
    folds = make_folds(cases, k=5, seed=0)
    assert len(folds) == 5 and [f.fold for f in folds] == list(range(5))
    test = folds[0].test
    assert all(f.test == test for f in folds) and len(_patients(folds[0], "test")) == 4
    vals = [_patients(f, "val") for f in folds]
    assert sum(len(v) for v in vals) == 18 and len(set().union(*vals)) == 18
    for fold in folds:
        parts = [_patients(fold, part) for part in PARTS]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert len(fold.train) + len(fold.val) + len(fold.test) == len(cases)
    assert folds[0].ratios == pytest.approx((0.64, 0.16, 0.2))
    assert make_folds(cases, k=5, seed=0) == folds
    with pytest.raises(ValueError, match="folds"):
        make_folds(_cohort(4), k=5, seed=0)
    with pytest.raises(ValueError, match="k >= 2"):
        make_folds(cases, k=1, seed=0)


def test_partition_returns_cases_and_rejects_unknown_ids() -> None:
    cases = _cohort(6)
    split = make_split(cases, seed=0)
    parts = split.partition(cases)
    assert [c.case_id for c in parts["val"]] == split.val
    with pytest.raises(ValueError, match="not in the dataset"):
        split.partition(cases[:2])


def test_broken_split_files_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such split file"):
        Split.load(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[")
    with pytest.raises(ValueError, match="not a JSON split file"):
        Split.load(bad)
    bad.write_text(json.dumps({"train": [], "val": [], "test": []}))
    with pytest.raises(ValueError, match="lacks seed, ratios"):
        Split.load(bad)
    bad.write_text(json.dumps({"train": ["a"], "val": ["a"], "test": [], "seed": 0, "ratios": [1, 1, 1]}))
    with pytest.raises(ValueError, match="more than one part"):
        Split.load(bad)
