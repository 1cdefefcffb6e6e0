"""Training curves: the losses and the validation Dice of a Lightning ``metrics.csv`` as a PNG.

Uses ``matplotlib.figure.Figure`` directly (no pyplot state, Agg canvas), as :mod:`h2aseg.viz.figures`.
"""

from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.figure import Figure

from h2aseg.viz.figures import _save_atomic


def save_training_curves(metrics_csv: Path, out_png: Path) -> None:
    """Plot the losses and the validation Dice of a Lightning ``CSVLogger`` ``metrics.csv``.

    Every column whose name contains ``loss`` goes on the left panel and every column containing
    ``dice`` on the right, against ``step`` (or ``epoch``, or the row number). Rows are sparse
    (Lightning writes training and validation values on separate rows); empty cells are skipped.

    Args:
        metrics_csv: the CSV written by Lightning's ``CSVLogger``.
        out_png: PNG to write (atomically).
    """
    metrics_csv = Path(metrics_csv)
    if not metrics_csv.is_file():
        raise ValueError(f"{metrics_csv}: no such metrics file")
    with metrics_csv.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    columns = list(rows[0]) if rows else []
    loss_columns = [column for column in columns if "loss" in column.lower()]
    dice_columns = [column for column in columns if "dice" in column.lower()]
    if not loss_columns and not dice_columns:
        raise ValueError(f"{metrics_csv}: no loss or Dice column to plot")
    x_name = next((name for name in ("step", "epoch") if name in columns), None)

    figure = Figure(figsize=(11, 4), layout="constrained")
    loss_axes, dice_axes = figure.subplots(1, 2)
    panels = ((loss_axes, loss_columns, "loss"), (dice_axes, dice_columns, "Dice"))
    for axes, names, ylabel in panels:
        axes.set_title(ylabel.capitalize(), fontsize=10)
        for name in names:
            x, y = _column_points(rows, x_name, name)
            axes.plot(x, y, marker="." if len(x) < 50 else None, label=name)
        axes.set_xlabel(x_name or "row")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        if names:
            axes.legend()
    dice_axes.set_ylim(0.0, 1.0)
    _save_atomic(figure, Path(out_png))


def _column_points(rows: list[dict[str, str]], x_name: str | None, y_name: str) -> tuple[list, list]:
    """The (x, y) pairs of the rows where ``y_name`` (and ``x_name``) are filled in."""
    points = [
        (float(row[x_name]) if x_name else index, float(row[y_name]))
        for index, row in enumerate(rows)
        if row.get(y_name) not in (None, "") and (x_name is None or row.get(x_name) not in (None, ""))
    ]
    return [x for x, _ in points], [y for _, y in points]
