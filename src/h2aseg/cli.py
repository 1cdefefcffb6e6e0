"""The ``h2aseg`` command line: one Typer command per library function, no logic of its own.

Heavy imports (torch, MONAI, Lightning) happen inside the commands so that ``--help`` is instant.
Every error raised while a command runs becomes one red line on stderr and exit code 1 (the
traceback only with ``--debug``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from h2aseg.cpu_allocator import keep_freed_memory
from h2aseg.errors import error_line

app = typer.Typer(
    help="PET/CT tumour segmentation with H2ASeg: phantoms, DICOM to SUV, training, prediction, metrics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
_settings = {"debug": False}


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
) -> None:
    """PET/CT tumour segmentation with H2ASeg."""
    _settings["debug"] = debug
    keep_freed_memory()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=verbose)],
        force=True,
    )


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn an error into one line on stderr and exit code 1 (re-raised with ``--debug``)."""
    try:
        yield
    except Exception as error:
        if _settings["debug"]:
            raise
        table = getattr(error, "rich_table", None)
        if callable(table):
            console.print(table())
        console.print(f"[bold red]error:[/] {error_line(error)}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None


_COVERAGE_HELP = (
    "Least fraction of the PET body the CT covers along z (x, y: 0.5 at most), 0 = any [default: 0.75]."
)


def _given(**options: object) -> dict[str, object]:
    """The options the user gave (``None`` leaves the library's default)."""
    return {key: value for key, value in options.items() if value is not None}


def _run(function: Callable[[], object]) -> object:
    with _user_errors():
        return function()


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder of the demo run.")] = Path("runs/demo"),
    cases: Annotated[int, typer.Option(help="Number of synthetic cases.")] = 40,
    seed: Annotated[int, typer.Option(help="Seed of the cohort and the training.")] = 0,
    minutes: Annotated[
        float | None, typer.Option(help="Wall-time budget of the training (default: the config's).")
    ] = None,
    test_cases: Annotated[
        int, typer.Option(help="Further held-out cases scored beside the split's test part.")
    ] = 40,
) -> None:
    """Synthetic cohort -> train H2ASeg -> predict held-out cases -> metrics, masks, reports, pictures."""
    from h2aseg.pipeline.demo import run_demo

    _run(lambda: run_demo(out, n_cases=cases, seed=seed, max_minutes=minutes, test_cases=test_cases))


@app.command()
def phantom(
    out: Annotated[Path, typer.Option(help="Folder to write the cohort into.")],
    cases: Annotated[int, typer.Option(help="Number of cases.")] = 10,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same cohort).")] = 0,
    layout: Annotated[str, typer.Option(help="autopet | nnunet | hecktor | flat")] = "autopet",
    preset: Annotated[str, typer.Option(help="small | autopet | hecktor")] = "small",
    mimics: Annotated[
        float, typer.Option(help="Mean number of CT-only-separable mimics per case (docs/data.md).")
    ] = 0.0,
) -> None:
    """Write a synthetic PET/CT cohort (CT in HU, PET in SUV, lesion masks) in a real dataset layout."""
    import dataclasses

    from h2aseg.phantom.cohort import write_cohort
    from h2aseg.phantom.sampling import resolve_preset

    if mimics < 0:
        console.print(f"[bold red]error:[/] --mimics must be 0 or more, got {mimics}")
        raise typer.Exit(code=1)

    def write() -> list:
        chosen = dataclasses.replace(resolve_preset(preset), mimics_per_case=mimics) if mimics else preset
        return write_cohort(out, n_cases=cases, seed=seed, layout=layout, preset=chosen)

    written = _run(write)
    console.print(f"wrote {len(written)} cases ({layout} layout, {preset} preset) to {out}")


@app.command("convert-dicom")
def convert_dicom(
    out: Annotated[Path, typer.Option(help="Output folder (pet_suv.nii.gz, ct.nii.gz, mask.nii.gz).")],
    ct: Annotated[Path | None, typer.Option(help="CT DICOM series folder.")] = None,
    pet: Annotated[Path | None, typer.Option(help="PET DICOM series folder.")] = None,
    rtstruct: Annotated[Path | None, typer.Option(help="RTSTRUCT file to turn into a mask.")] = None,
    roi: Annotated[
        str | None, typer.Option(help="ROI name in the RTSTRUCT (optional when it holds one ROI).")
    ] = None,
    allow_different_frames: Annotated[
        bool, typer.Option(help="Accept CT and PET of different patients or frames of reference.")
    ] = False,
) -> None:
    """CT + PET DICOM series -> NIfTI, PET in body-weight SUV, CT on the PET grid."""
    from h2aseg.data.dicom.series import convert_dicom as convert

    if ct is None and pet is None:
        console.print("[bold red]error:[/] give --ct, --pet or both")
        raise typer.Exit(code=1)
    if roi is not None and rtstruct is None:
        console.print("[bold red]error:[/] --roi names an ROI of --rtstruct: give the RTSTRUCT file too")
        raise typer.Exit(code=1)
    written = _run(
        lambda: convert(
            ct, pet, out, rtstruct=rtstruct, roi=roi, allow_different_frames=allow_different_frames
        )
    )
    for name, path in written.items():
        console.print(f"{name}: {path}")


@app.command("check-data")
def check_data(
    root: Annotated[Path, typer.Argument(help="Dataset folder.")],
    layout: Annotated[str, typer.Option(help="auto | autopet | hecktor | nnunet | flat")] = "auto",
) -> None:
    """Integrity check of a dataset: a table of every problem; exit code 1 if any."""
    from h2aseg.data.check import check_dataset, format_problems

    problems = _run(lambda: check_dataset(root, layout=layout))
    if problems:
        Console().print(format_problems(problems))
        console.print(f"[bold red]{len(problems)} problem(s) found in {root}[/]")
        raise typer.Exit(code=1)
    console.print(f"[green]no problem found in {root}[/]")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    config: Annotated[Path, typer.Option(help="YAML config (see configs/).")],
    resume: Annotated[bool, typer.Option(help="Continue from last.ckpt (same network and data).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the run already in output_dir.")] = False,
    allow_non_suv: Annotated[bool, typer.Option(help="Accept PET whose range is not SUV.")] = False,
    min_ct_coverage: Annotated[float | None, typer.Option(help=_COVERAGE_HELP, show_default=False)] = None,
) -> None:
    """Train a registered model from a YAML config; extra KEY=VALUE arguments override it."""
    from h2aseg.training.train import train as run_training

    best = _run(
        lambda: run_training(
            config,
            list(ctx.args),
            resume=resume,
            overwrite=overwrite,
            allow_non_suv=allow_non_suv,
            **_given(min_ct_coverage=min_ct_coverage),
        )
    )
    console.print(f"best checkpoint: {best}")


@app.command()
def predict(
    model: Annotated[
        list[Path],
        typer.Option(help="Checkpoint (.ckpt) or exported .onnx/.pt; repeat it for an ensemble."),
    ],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    ct: Annotated[Path | None, typer.Option(help="CT NIfTI (HU).")] = None,
    pet: Annotated[Path | None, typer.Option(help="PET NIfTI (SUV).")] = None,
    dataset: Annotated[Path | None, typer.Option(help="A dataset folder in any known layout.")] = None,
    ct_dicom: Annotated[Path | None, typer.Option(help="CT DICOM series folder.")] = None,
    pet_dicom: Annotated[Path | None, typer.Option(help="PET DICOM series folder.")] = None,
    grid: Annotated[str, typer.Option(help="pet | ct: the grid of the written mask.")] = "pet",
    overlap: Annotated[float | None, typer.Option(help="Sliding-window overlap (0-1).")] = None,
    sw_batch_size: Annotated[int | None, typer.Option(help="Windows per forward pass.")] = None,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="Flip test-time augmentation.")] = None,
    probabilities: Annotated[bool, typer.Option(help="Also write the probability map.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    dicom_seg: Annotated[
        bool, typer.Option(help="Also write a DICOM SEG ({case}_seg.dcm) referencing the source series.")
    ] = False,
    source_dicom: Annotated[
        Path | None,
        typer.Option(help="With --dicom-seg and NIfTI input: the series the PET (or CT) came from."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo cases whose outputs are complete.")] = False,
    allow_non_suv: Annotated[bool, typer.Option(help="Accept PET whose range is not SUV.")] = False,
    min_ct_coverage: Annotated[float | None, typer.Option(help=_COVERAGE_HELP, show_default=False)] = None,
    allow_different_frames: Annotated[
        bool, typer.Option(help="DICOM: accept CT and PET of different patients or frames of reference.")
    ] = False,
) -> None:
    """Whole-volume segmentation: masks in the original geometry, lesion reports, MIP pictures."""
    from h2aseg.pipeline.predict import INPUTS
    from h2aseg.pipeline.predict import predict as run_prediction

    given = {"ct": ct, "pet": pet, "dataset": dataset, "ct_dicom": ct_dicom, "pet_dicom": pet_dicom}
    flags = {
        kind: "/".join(f"--{name.replace('_', '-')}" for name in names) for kind, names in INPUTS.items()
    }
    chosen = [kind for kind, names in INPUTS.items() if any(given[name] is not None for name in names)]
    if len(chosen) != 1 or any(given[name] is None for name in INPUTS[chosen[0]]):
        console.print(
            f"[bold red]error:[/] give exactly one input: {', or '.join(flags.values())} (pairs together)"
        )
        raise typer.Exit(code=1)
    if dicom_seg and (dataset is not None or (ct is not None and source_dicom is None)):
        console.print(
            "[bold red]error:[/] --dicom-seg needs --ct-dicom/--pet-dicom, or --source-dicom with --ct/--pet"
        )
        raise typer.Exit(code=1)
    results = _run(
        lambda: run_prediction(
            model,
            out,
            ct=ct,
            pet=pet,
            dataset=dataset,
            ct_dicom=ct_dicom,
            pet_dicom=pet_dicom,
            grid=grid,
            overlap=overlap,
            sw_batch_size=sw_batch_size,
            tta=tta,
            save_probabilities=probabilities,
            device=device,
            dicom_seg=dicom_seg,
            source_dicom=source_dicom,
            overwrite=overwrite,
            allow_non_suv=allow_non_suv,
            allow_different_frames=allow_different_frames,
            **_given(min_ct_coverage=min_ct_coverage),
        )
    )
    console.print(f"segmented {len(results)} case(s); masks, lesion reports and pictures in {out}")


@app.command()
def export(
    model: Annotated[Path, typer.Option(help="Checkpoint (.ckpt) written by h2aseg train.")],
    out: Annotated[Path, typer.Option(help="File to write (.onnx or .pt).")],
    format: Annotated[str, typer.Option(help="onnx | torchscript")] = "onnx",
) -> None:
    """Export the network (one window, dynamic batch) with its config for serving."""
    from h2aseg.inference.serving import export_model

    written = _run(lambda: export_model(model, out, format=format))
    console.print(f"exported {model} to {written}")


@app.command()
def evaluate(
    pred: Annotated[Path, typer.Option(help="Folder of predicted masks ({case}_seg.nii.gz).")],
    gt: Annotated[Path, typer.Option(help="Ground truth: a dataset folder or a folder of masks.")],
    out: Annotated[Path | None, typer.Option(help="Write per_case.csv and summary.json here.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="A run's config.yaml or configs/*.yaml: its classes name the labels.")
    ] = None,
    labels: Annotated[
        list[str] | None,
        typer.Option(
            metavar="LABELS",
            help="Classes to score, numbers or names: --labels 1,2 or --labels GTVp (default all).",
        ),
    ] = None,
    resample_to_truth: Annotated[
        bool, typer.Option(help="Resample predictions on another grid onto the truth's (nearest neighbour).")
    ] = False,
) -> None:
    """Dice, HD95, precision, recall, autoPET FPV/FNV and HECKTOR aggregated Dice, per class."""
    from h2aseg.evaluation.evaluate import evaluate_folder, format_summary_table

    def run() -> dict:
        classes = None
        if config is not None:
            from h2aseg.config import resolve_config

            classes = resolve_config(config)["classes"]
        selected = [entry for text in labels or [] for entry in text.replace(",", " ").split()]
        return evaluate_folder(
            pred, gt, out, classes=classes, labels=selected or None, resample_to_truth=resample_to_truth
        )

    summary = _run(run)
    Console(soft_wrap=True).print(format_summary_table(summary))


@app.command()
def analyze(
    model: Annotated[Path, typer.Option(help="Checkpoint of an H2ASeg with TAMW.")],
    dataset: Annotated[Path, typer.Option(help="A dataset folder in any known layout.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    split: Annotated[Path | None, typer.Option(help="split.json: analyse only its test cases.")] = None,
    overlap: Annotated[float | None, typer.Option(help="Sliding-window overlap (0-1).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
) -> None:
    """What TAMW selects (paper's Table 3 and Fig. 4): tamw_table.md/.json, tamw_features_<case>.png."""
    from h2aseg.pipeline.analyze import analyze as run_analysis
    from h2aseg.pipeline.analyze import format_table

    table = _run(lambda: run_analysis(model, dataset, out, split_file=split, device=device, overlap=overlap))
    Console().print(format_table(table["depths"], table["channels_per_modality"], len(table["cases"])))


@app.command()
def bench(
    speed: Annotated[bool, typer.Option(help="Speed, memory and scaling of every model.")] = False,
    quality: Annotated[bool, typer.Option(help="Paper's Table 1/2 on the synthetic cohort.")] = False,
    pipeline: Annotated[
        bool,
        typer.Option(help="Training patches per second per data-loader worker (AutoPET-sized phantoms)."),
    ] = False,
    quick: Annotated[bool, typer.Option(help="Tiny sizes: a smoke check in minutes.")] = False,
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("benchmarks/results"),
    work_dir: Annotated[
        Path, typer.Option(help="--pipeline: phantoms and their preprocessed cache (kept).")
    ] = Path("/tmp/h2aseg-bench-pipeline"),
    label: Annotated[str, typer.Option(help="--pipeline: name of this run in the results file.")] = "after",
) -> None:
    """Measure the models on this machine (results as JSON and Markdown)."""
    if not (speed or quality or pipeline):
        console.print("[bold red]error:[/] choose --speed, --quality, --pipeline or several")
        raise typer.Exit(code=1)
    if pipeline:
        from h2aseg.bench.pipeline import run_pipeline_benchmark

        _run(lambda: run_pipeline_benchmark(out, work_dir, label, preset="small" if quick else "autopet"))
    if speed:
        from h2aseg.bench.speed import run_speed_benchmark

        _run(lambda: run_speed_benchmark(out, quick=quick))
    if quality:
        from h2aseg.bench.quality import run_quality_benchmark

        _run(lambda: run_quality_benchmark(out, quick=quick))
