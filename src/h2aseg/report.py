"""``report.html``: one self-contained page for a prediction run (pictures embedded, no server).

One section per case with its picture (PET MIPs and the axial CT, see :mod:`h2aseg.viz`), the
lesion table (MTV, SUVmax, SUVmean, SUVpeak, TLG per lesion, with its class) and the totals per
class; then the model files and the run's config. Numbers are read back from the files the case
wrote (``{case}_lesions.csv``, ``{case}_mip.png``), so the page shows exactly what they hold.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from h2aseg import __version__
from h2aseg.io import write_text_atomic

LESION_COLUMNS = (
    ("lesion_id", "Lesion", "{:.0f}"),
    ("class", "Class", "{}"),
    ("volume_ml", "MTV (mL)", "{:.2f}"),
    ("suv_max_g_per_ml", "SUVmax (g/mL)", "{:.2f}"),
    ("suv_mean_g_per_ml", "SUVmean (g/mL)", "{:.2f}"),
    ("suv_peak_g_per_ml", "SUVpeak (g/mL)", "{:.2f}"),
    ("tlg_g", "TLG (g)", "{:.1f}"),
)
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #1a1a1a; }
section { border-top: 2px solid #1f4e9c; margin-top: 2em; padding-top: 0.5em; }
img { max-width: 100%; height: auto; border: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.7em; text-align: right; }
th { background: #eef2f9; }
td.text { text-align: left; }
pre { background: #f5f5f5; padding: 1em; overflow-x: auto; font-size: 0.85em; }
"""


class CaseFiles(Protocol):
    """What the report needs of a case (:class:`h2aseg.inference.predictor.CaseResult` has it)."""

    case_id: str
    lesions_csv: Path
    figure: Path


def write_report(
    out_html: Path,
    cases: Sequence[CaseFiles],
    config: Mapping[str, Any],
    models: Sequence[str | Path],
) -> Path:
    """Write ``report.html`` (atomically; not at all when it already holds this page) for the cases
    of one prediction run.

    Args:
        out_html: the page to write.
        cases: the cases' written files, in the order to show them.
        config: the run's config (its ``classes`` name the lesion classes; shown in full).
        models: the model files used (several: an ensemble).
    """
    classes = {int(label): str(name) for label, name in (config.get("classes") or {1: "lesion"}).items()}
    model_list = "".join(f"<li><code>{html.escape(str(path))}</code></li>" for path in models)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>h2aseg report ({len(cases)} case{'s' if len(cases) != 1 else ''})</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>h2aseg lesion report</h1>",
        f"<p>{len(cases)} case(s), h2aseg {__version__}. SUV is body-weight SUV "
        "(g/mL); lesions are 18-connected components of the mask, numbered as in the CSV files. "
        "Research use only: not a medical device.</p>",
        *(_case_section(case, classes) for case in cases),
        '<section id="model"><h2>Model and configuration</h2>',
        f"<p>Model file(s){' (ensemble: mean probabilities)' if len(models) > 1 else ''}:</p>",
        f"<ul>{model_list}</ul>",
        f"<pre>{html.escape(json.dumps(config, indent=2, default=str))}</pre></section>",
        "</body></html>",
    ]
    text = "\n".join(parts) + "\n"
    return write_text_atomic(out_html, text, only_if_changed=True)


def _case_section(case: CaseFiles, classes: Mapping[int, str]) -> str:
    with Path(case.lesions_csv).open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    for row in rows:
        row["class"] = classes.get(int(row["class_label"]), row["class_label"])
    picture = base64.b64encode(Path(case.figure).read_bytes()).decode("ascii")
    case_id = html.escape(case.case_id)
    return "\n".join(
        [
            f'<section class="case" id="case-{case_id}"><h2>{case_id}</h2>',
            f'<img alt="PET MIPs and axial CT of {case_id}" src="data:image/png;base64,{picture}">',
            f"<h3>Lesions ({len(rows)})</h3>",
            _table(rows, LESION_COLUMNS, "lesions"),
            "<h3>Per class</h3>",
            _table(_class_totals(rows), _TOTAL_COLUMNS, "classes"),
            "</section>",
        ]
    )


_TOTAL_COLUMNS = (
    ("class", "Class", "{}"),
    ("lesions", "Lesions", "{:.0f}"),
    ("volume_ml", "MTV (mL)", "{:.2f}"),
    ("suv_max_g_per_ml", "SUVmax (g/mL)", "{:.2f}"),
    ("tlg_g", "TLG (g)", "{:.1f}"),
)


def _class_totals(rows: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
    """Lesion count, summed MTV and TLG, and the largest SUVmax of each class present."""
    totals: dict[str, dict[str, Any]] = {}
    for row in rows:
        total = totals.setdefault(
            row["class"],
            {"class": row["class"], "lesions": 0, "volume_ml": 0.0, "suv_max_g_per_ml": 0.0, "tlg_g": 0.0},
        )
        total["lesions"] += 1
        total["volume_ml"] += float(row["volume_ml"])
        total["tlg_g"] += float(row["tlg_g"])
        total["suv_max_g_per_ml"] = max(total["suv_max_g_per_ml"], float(row["suv_max_g_per_ml"]))
    return list(totals.values())


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]], kind: str) -> str:
    if not rows:
        return f'<p class="{kind}">No lesion.</p>'
    header = "".join(f"<th>{html.escape(title)}</th>" for _, title, _ in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=text' if fmt == '{}' else ''}>"
            f"{html.escape(fmt.format(float(row[key]) if fmt != '{}' else row[key]))}</td>"
            for key, _, fmt in columns
        )
        + "</tr>"
        for row in rows
    )
    return f'<table class="{kind}"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>'
