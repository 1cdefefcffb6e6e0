"""Whole-body prediction on this CPU: ``python benchmarks/predict_speed.py --windows --label after``.

``--windows``: windows per second of ``Predictor.predict_volume`` (no TTA and the 8-flip TTA) on
the whole grid of an ``autopet``-preset phantom, as the issue's GPU figure passes 400 × 400 × 326
to ``predict_volume`` (air around the body included), scaled by 1/4 for this CPU: every fourth
voxel (100 × 100 × 90), 32 × 32 × 16 windows (the paper's 128 × 128 × 64 / 4) and a quarter-width
H2ASeg; recorded under ``--label`` in ``benchmarks/results/predict_speed_cpu.json``, so that runs
of two versions of the code (``PYTHONPATH=<other checkout>/src``) sit side by side.
``--predict``: the whole ``predict`` of that study at full size (quarter-width network),
seconds per stage and peak host memory.
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import torch

from h2aseg.bench.cohort import DEFAULT_CONFIG, ensure_phantoms
from h2aseg.bench.prediction import air_window_fraction, measure_predict, measure_windows
from h2aseg.config import resolve_config, to_plain
from h2aseg.data.layouts import read_dataset
from h2aseg.data.transforms import PreprocessConfig, predict_transforms

ROI = (32, 32, 16)


def _record(path: Path, section: str, label: str, result: dict) -> None:
    document = json.loads(path.read_text()) if path.is_file() else {}
    result["measured"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    document.setdefault(section, {})[label] = result
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    temporary.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/h2aseg-bench-pipeline"))
    parser.add_argument("--label", default="after")
    parser.add_argument("--windows", action="store_true")
    parser.add_argument("--predict", action="store_true")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sw-batch-size", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    results = args.out / "predict_speed_cpu.json"
    case = read_dataset(ensure_phantoms(args.work_dir, 2), require_labels=True)[0]
    autopet = to_plain(resolve_config(DEFAULT_CONFIG))
    if args.windows:
        image_path = args.work_dir / f"{case.case_id}_image_quarter.pt"
        preprocess = PreprocessConfig.from_dict({**autopet["preprocess"], "crop_foreground": False})
        if not image_path.is_file():
            image = predict_transforms(preprocess)(case.as_dict())["image"].as_tensor()[:, ::4, ::4, ::4]
            torch.save(image.contiguous().clone(), image_path)
        image = torch.load(image_path, weights_only=True)
        model = {**autopet["model"], "channels": [2, 4, 8, 16, 32]}
        config = {"model": model, "preprocess": {**preprocess.to_dict(), "patch_size": list(ROI)}}
        runs = {
            f"tta={tta}": measure_windows(image, config, tta, args.overlap, args.sw_batch_size)
            for tta in (False, True)
        }
        (ct_low, ct_high), (pet_low, pet_high) = preprocess.ct_window_hu, preprocess.pet_clip_suv
        levels = (
            (preprocess.body_threshold_hu - ct_low) / (ct_high - ct_low),
            (preprocess.body_threshold_suv - pet_low) / (pet_high - pet_low),
        )
        runs["air_window_fraction"] = round(air_window_fraction(image, ROI, args.overlap, levels), 3)
        logging.info("%s", runs)
        _record(results, "windows", args.label, runs)
    if args.predict:
        from h2aseg.models import build_model

        model_config = {**autopet["model"], "channels": [2, 4, 8, 16, 32]}
        config = {**autopet, "model": model_config}
        model = build_model(model_config["name"], **{k: v for k, v in model_config.items() if k != "name"})
        checkpoint = args.work_dir / "quarter_width.ckpt"
        state = {f"model.{k}": v for k, v in model.state_dict().items()}
        torch.save({"hyper_parameters": {"config": config}, "state_dict": state}, checkpoint)
        result = measure_predict(checkpoint, case.ct, case.pet, args.work_dir / "predict_out", tta=False)
        logging.info("%s", result)
        _record(results, "predict", args.label, result)


if __name__ == "__main__":
    main()
