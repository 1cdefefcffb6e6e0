"""What TAMW selects in a trained model: the paper's Table 3 and Fig. 4 for a set of cases.

``analyze`` (behind ``h2aseg analyze``) loads a checkpoint with
:meth:`~h2aseg.inference.predictor.Predictor.from_checkpoint`, preprocesses each case with the
checkpoint's own transforms and segments it with the predictor's sliding window (no TTA), while a
:class:`~h2aseg.inference.tamw_record.TamwRecorder` keeps the TAMW weights of every window.

Per case, the share of emphasised channels (weight > 0) at a depth is taken over all its
windows × channels, every window of the sliding window counting once; the table gives the mean ±
standard deviation (population, ``ddof=0``) of these per-case shares. Fig. 4 is drawn from one
more forward of a single window of the training patch size centred on the case's largest lesion.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from h2aseg.data.layouts import Case, read_dataset
from h2aseg.data.splits import Split
from h2aseg.data.transforms import PreprocessConfig, preprocess_transforms
from h2aseg.inference.export import check_output_dir
from h2aseg.inference.predictor import Predictor
from h2aseg.inference.tamw_record import TamwRecorder, emphasis_shares, find_tamw_network
from h2aseg.io import LESION_CONNECTIVITY, atomic_output

logger = logging.getLogger(__name__)

COLUMNS = ("fore_pet", "fore_ct", "back_pet", "back_ct")
FIGURE_DEPTH = 2  # the paper's Fig. 4 shows F²_pet and F²_ct
TOP_CHANNELS = 4
PET_DISPLAY_SUV = (0.0, 10.0)
CT_DISPLAY_HU = (-160.0, 240.0)  # soft-tissue window, as in h2aseg.viz


def analyze(
    model_path: str | Path,
    dataset: str | Path,
    out_dir: str | Path,
    *,
    split_file: str | Path | None = None,
    device: str = "auto",
    overlap: float | None = None,
    sw_batch_size: int | None = None,
) -> dict[str, Any]:
    """Write ``tamw_table.{json,md}`` and ``tamw_features_<case>.png`` for the cases of a dataset.

    Args:
        model_path: checkpoint of an H2ASeg with TAMW (``h2aseg``, ``h2aseg-tamw``, ...).
        dataset: dataset folder in any layout :func:`~h2aseg.data.layouts.read_dataset` knows;
            cases with a label get their figure on the largest labelled lesion, the others on
            the largest predicted one (no figure for a case without either).
        out_dir: output folder (created; must not be a file).
        split_file: a ``split.json``; only its test cases are analysed.
        device, overlap, sw_batch_size: as in :class:`~h2aseg.inference.predictor.Predictor`.

    Returns:
        The content of ``tamw_table.json``.
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    predictor = Predictor.from_checkpoint(
        model_path, device, overlap=overlap, sw_batch_size=sw_batch_size, tta=False
    )
    network = find_tamw_network(predictor.model)
    cases = _select_cases(read_dataset(Path(dataset)), split_file)
    transforms = {
        labelled: preprocess_transforms(predictor.preprocess, labelled) for labelled in (True, False)
    }
    out_dir.mkdir(parents=True, exist_ok=True)

    per_case: dict[str, dict[str, Any]] = {}
    for case in cases:
        data = transforms[case.label is not None](case.as_dict())
        image = torch.as_tensor(data["image"]).as_subclass(torch.Tensor)[None]
        with TamwRecorder(predictor.model) as recorder:
            probabilities = predictor.predict_volume(image)
        shares = emphasis_shares(recorder.depths)
        windows = sum(len(batch) for batch in recorder.depths[1].fore)
        per_case[case.case_id] = {"windows": windows, "shares": {str(d): s for d, s in shares.items()}}
        if case.label is not None:
            lesions = np.asarray(data["label"])[0] > 0
        else:
            lesions = predictor.labels_from(probabilities[0]).numpy() > 0
        figure = out_dir / f"tamw_features_{case.case_id}.png"
        if lesions.any():
            save_feature_figure(predictor, image[0], lesions, figure, case.case_id)
        else:
            logger.info("%s: no lesion, no feature picture", case.case_id)
        logger.info("%s: TAMW weights of %d windows", case.case_id, windows)

    n_depths = len(network.tamw)
    summary = {
        str(depth): {
            column: _mean_std([per_case[c]["shares"][str(depth)][column] for c in per_case])
            for column in COLUMNS
        }
        for depth in range(1, n_depths + 1)
    }
    channels = {str(depth): tamw.encoder_channels for depth, tamw in enumerate(network.tamw, 1)}
    table = {
        "checkpoint": str(model_path),
        "use_mcsa": network.use_mcsa,
        "channels_per_modality": channels,
        "definition": "percentage of a modality's channels with a TAMW weight W > 0 (emphasised; "
        "paper's sign: W_back is the negated background MLP output, which TAMW subtracts), over "
        "every sliding window of a case; mean and population std over cases",
        "depths": summary,
        "cases": per_case,
    }
    with atomic_output(out_dir / "tamw_table.json") as staged:
        staged.write_text(json.dumps(table, indent=2) + "\n")
    with atomic_output(out_dir / "tamw_table.md") as staged:
        staged.write_text(format_table(summary, channels, len(per_case)))
    return table


def _select_cases(cases: list[Case], split_file: str | Path | None) -> list[Case]:
    """The test cases of ``split_file`` (all of them without one); a ``ValueError`` when none is left."""
    if split_file is None:
        return cases
    test = set(Split.load(Path(split_file)).test)
    chosen = [case for case in cases if case.case_id in test]
    if not chosen:
        raise ValueError(f"{split_file}: none of its test cases is in the dataset")
    return chosen


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def format_table(
    summary: dict[str, dict[str, dict[str, float]]], channels: dict[str, int], n_cases: int
) -> str:
    """Markdown of the paper's Table 3: emphasised channels (%) per depth, mean ± std over cases.

    Args:
        summary: ``{depth: {column: {"mean", "std"}}}`` with the columns of :data:`COLUMNS`.
        channels: ``{depth: C}``, channels per modality (a share is a multiple of 100 / C per window).
        n_cases: number of cases averaged.
    """
    lines = [
        f"TAMW: channels with a weight > 0 (%), mean ± std over {n_cases} case(s)",
        "",
        "| Depth | C | Foreground PET | Foreground CT | Background PET | Background CT |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for depth, row in summary.items():
        cells = " | ".join(f"{row[c]['mean']:.2f} ± {row[c]['std']:.2f}" for c in COLUMNS)
        lines.append(f"| {depth} | {channels[depth]} | {cells} |")
    return "\n".join(lines) + "\n"


def _largest_lesion_slice(lesions: np.ndarray) -> tuple[tuple[int, int, int], int]:
    """Rounded centroid ``(x, y, z)`` of the largest 18-connected lesion and its fullest axial slice."""
    labels = cc3d.connected_components(lesions, connectivity=LESION_CONNECTIVITY)
    largest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    coordinates = np.argwhere(labels == largest)
    centre = tuple(int(v) for v in np.round(coordinates.mean(axis=0)))
    z = int(np.argmax(np.bincount(coordinates[:, 2])))
    return centre, z


def _window_around(
    image: torch.Tensor, lesions: np.ndarray, centre: tuple[int, ...], size: tuple[int, ...]
) -> tuple[torch.Tensor, np.ndarray, tuple[int, ...]]:
    """A ``size`` window of ``image`` ``(2, X, Y, Z)`` (zero-padded at the end where smaller, as
    training pads patches) around ``centre``; with the lesion mask cut the same way and its start."""
    pad = [max(0, s - n) for s, n in zip(size, image.shape[1:], strict=True)]
    image = F.pad(image, [p for extra in reversed(pad) for p in (0, extra)])
    lesions = np.pad(lesions, [(0, extra) for extra in pad])
    start = tuple(
        int(np.clip(c - s // 2, 0, n - s)) for c, s, n in zip(centre, size, image.shape[1:], strict=True)
    )
    window = tuple(slice(a, a + s) for a, s in zip(start, size, strict=True))
    return image[(slice(None), *window)], lesions[window], start


def save_feature_figure(
    predictor: Predictor, image: torch.Tensor, lesions: np.ndarray, out_png: Path, title: str
) -> None:
    """The paper's Fig. 4 for one case: PET and CT slices and the F² feature maps TAMW weights most.

    Args:
        predictor: holds the network (with TAMW) and the preprocessing of its checkpoint.
        image: preprocessed ``(2, X, Y, Z)`` volume (CT, PET scaled to [0, 1]).
        lesions: ``(X, Y, Z)`` boolean lesion mask on the same grid (not empty).
        out_png: picture to write (atomically).
        title: figure title (the case id).
    """
    centre, z = _largest_lesion_slice(lesions)
    window, window_lesions, start = _window_around(image, lesions, centre, predictor.roi_size)
    z_window = z - start[2]
    with torch.inference_mode(), TamwRecorder(predictor.model, (FIGURE_DEPTH,)) as recorder:
        predictor.model(window[None].to(predictor.device))
    record = recorder.depths[FIGURE_DEPTH]
    features = record.features[0][0].numpy()  # (2C, X', Y', Z') on the network's padded grid
    network = find_tamw_network(predictor.model)
    scale = 2 ** (FIGURE_DEPTH - 1)
    offsets = [(-s % m) // 2 for s, m in zip(window.shape[1:], network.size_multiple, strict=True)]

    def feature_slice(channel: int) -> np.ndarray:
        plane = features[channel, :, :, (z_window + offsets[2]) // scale]
        plane = plane.repeat(scale, axis=0).repeat(scale, axis=1)  # nearest, onto the window grid
        return plane[offsets[0] : offsets[0] + window.shape[1], offsets[1] : offsets[1] + window.shape[2]]

    cfg: PreprocessConfig = predictor.preprocess
    pet_weights, ct_weights = record.weights("fore", "pet")[0], record.weights("fore", "ct")[0]
    rows = {
        "PET": (window[1].numpy(), cfg.pet_clip_suv, PET_DISPLAY_SUV, "gray_r", pet_weights),
        "CT": (window[0].numpy(), cfg.ct_window_hu, CT_DISPLAY_HU, "gray", ct_weights),
    }
    c = record.encoder_channels
    k = min(TOP_CHANNELS, c)
    figure = Figure(figsize=(2.4 * (k + 1), 5.4), layout="constrained")
    axes = figure.subplots(2, k + 1, squeeze=False)
    for row, (name, (scaled, (low, high), display, cmap, weights)) in enumerate(rows.items()):
        plane = low + scaled[:, :, z_window] * (high - low)
        _panel(axes[row, 0], plane, cmap, display, f"{name} ({'SUV' if name == 'PET' else 'HU'})")
        _outline(axes[row, 0], window_lesions[:, :, z_window])
        order = torch.argsort(weights, descending=True)[:k].tolist()
        for column, channel in enumerate(order, 1):
            index = channel + (c if name == "PET" else 0)
            plane = feature_slice(index)
            label = f"F²{name.lower()} ch {channel}, w = {weights[channel]:+.2f}"
            _panel(axes[row, column], plane, "magma", (float(plane.min()), float(plane.max())), label)
            _outline(axes[row, column], window_lesions[:, :, z_window])
    figure.suptitle(
        f"{title}: TAMW depth {FIGURE_DEPTH}, feature maps with the largest foreground weights "
        f"(axial slice {z}, lesion outlined)",
        fontsize=10,
    )
    with atomic_output(out_png) as staged:
        figure.savefig(staged, dpi=110)


def _to_display(plane: np.ndarray) -> np.ndarray:
    """RAS ``(x, y)`` plane → image rows/columns as in :mod:`h2aseg.viz` (radiological view)."""
    return np.flip(plane, axis=(0, 1)).T


def _panel(axes: Any, plane: np.ndarray, cmap: str, window: tuple[float, float], title: str) -> None:
    axes.imshow(_to_display(plane), cmap=cmap, vmin=window[0], vmax=window[1], interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title, fontsize=9)


def _outline(axes: Any, region: np.ndarray) -> None:
    if region.any():
        axes.contour(_to_display(region).astype(np.float32), levels=[0.5], colors="#1f9e3a", linewidths=0.8)
