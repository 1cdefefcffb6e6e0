"""report.html: structure (sections, embedded pictures, lesion tables, config) and a real browser."""

from __future__ import annotations

import base64
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest

from h2aseg.evaluation.quantify import lesion_table, write_lesion_report
from h2aseg.report import write_report
from h2aseg.viz import save_nifti_case_figure

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CLASSES = {0: "background", 1: "GTVp", 2: "GTVn"}


@dataclass(frozen=True)
class Case:
    case_id: str
    mask: Path
    lesions_csv: Path
    figure: Path


class _Page(HTMLParser):
    """Collects the sections, images, table cells and external references of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.external: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "section":
            self.sections.append(values.get("id") or "")
        elif tag == "img":
            self.images.append(values["src"] or "")
        elif tag == "table":
            self.tables.append((values.get("class") or "", []))
        elif tag == "tr":
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        for name in ("src", "href"):
            if values.get(name) and not str(values[name]).startswith("data:"):
                self.external.append(str(values[name]))

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1].append("".join(self._cell))
            self._cell = None


def _case(folder: Path, case_id: str, shift: int) -> Case:
    """A PET with two lesions of different classes (GTVp larger and hotter) and a CT on its own grid."""
    affine = np.diag([-4.0, -4.0, 3.0, 1.0])
    pet = np.ones((30, 28, 24), np.float32)
    labels = np.zeros(pet.shape, np.uint8)
    labels[5 + shift : 10 + shift, 6:11, 4:9] = 1
    labels[20:23, 18:21, 15:18] = 2
    pet[labels == 1], pet[labels == 2] = 9.0, 5.0
    ct = nib.Nifti1Image(np.full((60, 56, 24), 30.0, np.float32), np.diag([-2.0, -2.0, 3.0, 1.0]))
    pet_image = nib.Nifti1Image(pet, affine)
    paths = {name: folder / f"{case_id}_{name}" for name in ("seg.nii.gz", "lesions.csv", "mip.png")}
    nib.save(nib.Nifti1Image(labels, affine), paths["seg.nii.gz"])
    lesions = lesion_table(labels, pet, affine)
    write_lesion_report(lesions, paths["lesions.csv"], folder / f"{case_id}_summary.json", case_id, CLASSES)
    numbers = [(lesion.lesion_id, lesion.centroid_mm) for lesion in lesions]
    save_nifti_case_figure(pet_image, labels, ct, paths["mip.png"], title=case_id, lesions=numbers)
    return Case(case_id, paths["seg.nii.gz"], paths["lesions.csv"], paths["mip.png"])


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    cases = [_case(folder, "case_a", 0), _case(folder, "case_b", 2)]
    config = {"model": {"name": "h2aseg"}, "classes": CLASSES}
    return write_report(folder / "report.html", cases, config, ["fold0.ckpt", "fold1.ckpt"])


def test_report_is_self_contained_with_one_section_per_case(report: Path) -> None:
    page = _Page()
    page.feed(report.read_text(encoding="utf-8"))
    assert page.sections == ["case-case_a", "case-case_b", "model"]
    assert page.external == []
    assert len(page.images) == 2
    for source in page.images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    lesion_tables = [rows for kind, rows in page.tables if kind == "lesions"]
    assert len(lesion_tables) == 2
    header, first, second = lesion_tables[0]
    assert header == [
        "Lesion",
        "Class",
        "MTV (mL)",
        "SUVmax (g/mL)",
        "SUVmean (g/mL)",
        "SUVpeak (g/mL)",
        "TLG (g)",
    ]
    assert first[:2] == ["1", "GTVp"] and second[:2] == ["2", "GTVn"]
    assert first[2] == f"{125 * 48 / 1000:.2f}" and first[3] == "9.00" and second[4] == "5.00"
    classes = next(rows for kind, rows in page.tables if kind == "classes")
    assert [row[:2] for row in classes[1:]] == [["GTVp", "1"], ["GTVn", "1"]]
    text = report.read_text(encoding="utf-8")
    assert "fold0.ckpt" in text and "fold1.ckpt" in text and "ensemble" in text and "&quot;GTVn&quot;" in text


def test_report_renders_in_a_headless_browser(report: Path, tmp_path: Path) -> None:
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if browser is None:
        pytest.skip(f"no headless browser installed (looked for {', '.join(BROWSERS)} on PATH)")
    screenshot = tmp_path / "page.png"
    completed = subprocess.run(
        [
            *(browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"),
            *(f"--screenshot={screenshot}", "--window-size=1400,1800", report.as_uri()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    # The page has no script: any console message (a failed load, a parse error) is a fault.
    assert [line for line in completed.stderr.splitlines() if "CONSOLE" in line] == []

    pixels = matplotlib.image.imread(screenshot)
    assert pixels.std() > 0.05  # not a blank page
