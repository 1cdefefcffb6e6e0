"""Serving: export a trained network to ONNX or TorchScript, and predict with the exported file.

Only the network is exported: one window ``(B, 2, X, Y, Z)`` at the training patch size in, its
logits ``(B, out_channels, X, Y, Z)`` out, with a dynamic batch axis. The sliding window, TTA,
activation and geometry restore stay in :class:`~h2aseg.inference.predictor.Predictor`, which runs
an exported file through :class:`OnnxNetwork` (onnxruntime) or :class:`TorchScriptNetwork` in place
of the PyTorch model. The run's config (``model``, ``preprocess``, ``inference``, ``classes``) and
the network's ``out_channels`` / ``output_activation`` travel inside the file (ONNX
``metadata_props``, TorchScript extra files), so the exported file alone suffices for prediction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from h2aseg.inference.predictor import Predictor, TtaSetting
from h2aseg.io import atomic_output, first_line

logger = logging.getLogger(__name__)

ExportFormat = Literal["onnx", "torchscript"]
ONNX_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "image", "logits"
METADATA_KEYS = ("h2aseg.config", "h2aseg.out_channels", "h2aseg.output_activation")
TORCHSCRIPT_METADATA = "h2aseg.json"
EXPORT_SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}


def export_model(
    checkpoint: str | Path, out: str | Path, format: ExportFormat = "onnx", opset: int = ONNX_OPSET
) -> Path:
    """Export the network of a checkpoint, with its config, for serving.

    Args:
        checkpoint: Lightning ``.ckpt`` (see :meth:`Predictor.from_checkpoint`).
        out: file to write (``.onnx`` or ``.pt``; written under a temporary name, then renamed).
        format: ``"onnx"`` (``torch.onnx.export`` with the ``torch.export`` exporter, opset
            ``opset``) or ``"torchscript"`` (``torch.jit.trace``).
        opset: ONNX opset version (>= 17: scaled-dot-product attention, LayerNorm).

    Returns:
        ``out``.
    """
    if format not in EXPORT_SUFFIXES:
        raise ValueError(f"format must be one of {', '.join(EXPORT_SUFFIXES)}, got {format!r}")
    out = Path(out)
    if out.suffix != EXPORT_SUFFIXES[format]:
        raise ValueError(f"{out}: a {format} export must end in {EXPORT_SUFFIXES[format]}")
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    model = predictor.model.eval()
    example = torch.randn(2, 2, *predictor.roi_size)  # batch 2: torch.export specialises a batch of 1
    metadata = {
        "h2aseg.config": json.dumps(predictor.config, default=str),
        "h2aseg.out_channels": str(predictor.out_channels),
        "h2aseg.output_activation": str(predictor.activation),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as temporary:
        if format == "onnx":
            try:
                _export_onnx(model, example, metadata, temporary, opset)
            except ImportError as error:  # onnx or onnxscript (the exporter's) missing
                raise ValueError(
                    f"{out}: ONNX export needs pip install 'h2aseg[serving]' ({error})"
                ) from error
        else:
            with torch.no_grad():
                traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, str(temporary), _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata)})
    logger.info("exported %s to %s (%s)", checkpoint, out, format)
    return out


def _export_onnx(
    model: nn.Module, example: torch.Tensor, metadata: Mapping[str, str], path: Path, opset: int
) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.onnx.export(
            model,
            (example,),
            None,
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    proto = program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(proto, str(path))


class OnnxNetwork(nn.Module):
    """An exported ONNX network run by onnxruntime, with the registry's network contract.

    Args:
        path: ``.onnx`` file written by :func:`export_model`.
        providers: onnxruntime execution providers (default: CUDA when available, then CPU).

    Attributes:
        out_channels, output_activation: read from the file's metadata.
        config: the run's config stored in the file.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime
        except ImportError as error:
            raise ValueError(
                f"{path}: running ONNX needs onnxruntime: pip install 'h2aseg[serving]'"
            ) from error

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such ONNX file")
        available = onnxruntime.get_available_providers()
        chosen = list(
            providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        )
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=chosen)
        except Exception as error:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ValueError(f"{path}: not a readable ONNX model ({first_line(error)})") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.out_channels, self.output_activation, self.config = _read_metadata(metadata, path)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, X, Y, Z)`` of windows ``(B, 2, X, Y, Z)`` (float32)."""
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(np.asarray(logits)).to(x.device)


class TorchScriptNetwork(nn.Module):
    """A TorchScript network written by :func:`export_model`, with the registry's contract.

    Attributes:
        out_channels, output_activation, config: read from the file's extra files.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such TorchScript file")
        extra = {TORCHSCRIPT_METADATA: ""}
        try:
            self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as error:  # torch.jit raises RuntimeError and pickle errors
            raise ValueError(f"{path}: not a readable TorchScript model ({first_line(error)})") from error
        try:
            metadata = json.loads(extra[TORCHSCRIPT_METADATA] or "{}")
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: unreadable {TORCHSCRIPT_METADATA} ({error})") from error
        self.out_channels, self.output_activation, self.config = _read_metadata(metadata, path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def load_network(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The network and config of an exported file (by suffix: ``.onnx`` or ``.pt``)."""
    path = Path(path)
    network = OnnxNetwork(path) if path.suffix == ".onnx" else TorchScriptNetwork(path)
    return network, network.config


def _read_metadata(metadata: Mapping[str, str], path: Path) -> tuple[int, str, dict[str, Any]]:
    """``(out_channels, output_activation, config)`` from the metadata of an exported file."""
    missing = [key for key in METADATA_KEYS if key not in metadata]
    if missing:
        raise ValueError(f"{path}: no {missing[0]} metadata; export it with h2aseg export")
    config = json.loads(metadata["h2aseg.config"])
    if isinstance(config.get("classes"), dict):  # JSON made the integer labels strings
        config["classes"] = {int(label): name for label, name in config["classes"].items()}
    return int(metadata["h2aseg.out_channels"]), str(metadata["h2aseg.output_activation"]), config


def load_predictor(
    path: str | Path,
    device: str = "auto",
    *,
    overlap: float | None = None,
    sw_batch_size: int | None = None,
    tta: TtaSetting = None,
) -> Predictor:
    """A :class:`Predictor` for a checkpoint (``.ckpt``) or an exported ``.onnx`` / ``.pt`` file."""
    path = Path(path)
    if path.suffix not in (".onnx", ".pt"):
        return Predictor.from_checkpoint(path, device, overlap=overlap, sw_batch_size=sw_batch_size, tta=tta)
    network, config = load_network(path)
    logger.info("loaded exported network %s", path)
    return Predictor(network, config, device, overlap=overlap, sw_batch_size=sw_batch_size, tta=tta)
