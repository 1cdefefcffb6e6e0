"""The ``h2aseg`` command line: one Typer command per library function."""

from __future__ import annotations

import typer

app = typer.Typer(help="PET/CT tumour segmentation with H2ASeg.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """PET/CT tumour segmentation with H2ASeg."""
