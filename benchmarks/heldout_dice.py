"""Score a trained checkpoint on a fresh synthetic cohort that no run has seen.

``python benchmarks/heldout_dice.py CKPT [CKPT ...] [--cases 40] [--cohort-seed 1000] [--out DIR]``
writes the cohort once (``small`` preset, AutoPET layout, no mimics: the demo's distribution), then
for each checkpoint its predictions and ``evaluate`` tables under ``DIR/<n>_<checkpoint stem>``, and
prints one line per checkpoint: mean Dice over the cases with a lesion, their number, aggregated Dice.
How the demo's 8-case test set compared with 26 such cases is in docs/results.md.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from rich.progress import track

from h2aseg.data.layouts import read_dataset
from h2aseg.evaluation.evaluate import evaluate_folder
from h2aseg.inference.predictor import Predictor
from h2aseg.phantom.cohort import write_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--cohort-seed", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("runs/heldout"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = args.out / f"cohort_{args.cohort_seed}_{args.cases}"
    if not (data / ".complete").is_file():
        if data.exists():
            shutil.rmtree(data)
        write_cohort(data, n_cases=args.cases, seed=args.cohort_seed, layout="autopet", preset="small")
        (data / ".complete").write_text("")
    cases = read_dataset(data, layout="autopet")
    truth = args.out / f"truth_{args.cohort_seed}_{args.cases}"
    truth.mkdir(parents=True, exist_ok=True)
    for case in cases:
        shutil.copyfile(case.label, truth / f"{case.case_id}_seg.nii.gz")
    for index, checkpoint in enumerate(args.checkpoints):
        run = args.out / f"{index}_{checkpoint.parent.parent.name}_{checkpoint.stem}"
        predictor = Predictor.from_checkpoint(checkpoint, device="auto")
        for case in track(cases, description=f"{checkpoint}"):
            predictor.predict_case(case.ct, case.pet, run / "predictions", case.case_id)
        summary = evaluate_folder(run / "predictions", truth, run / "evaluation")
        lesion = next(iter(summary["classes"].values()))
        dice, aggregated = 100 * lesion["dice"]["mean"], 100 * lesion["dice_agg"]["mean"]
        print(
            f"{checkpoint}: Dice {dice:.2f} % over {lesion['dice']['n']} cases with a lesion, "
            f"aggregated Dice {aggregated:.2f} %"
        )


if __name__ == "__main__":
    main()
