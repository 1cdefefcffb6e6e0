"""Start a segmentation network at a foreground prior (Lin et al., RetinaNet, ICCV 2017, Sec. 4.1).

A randomly initialised network predicts about 50 % foreground everywhere. Before it learns anything
about lesions it must push every logit to the background prior, and with Adam its weights move by
about the learning rate per step, so architectures reach that plateau after very different numbers
of steps (docs/results.md). Setting the biases of the layers that produce the logits so that every
voxel starts at the prior removes that phase for every network alike.

The output layers are found from the autograd graph of one forward pass, not by module names: from
each output (every deep-supervision output too) back through the operations that resize, crop, pad,
stack, copy or add to it, to the convolution or linear layer that made it. That works for every
network of the registry, whatever its head is called; a network whose output is made otherwise (or
by a layer without a bias) is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from h2aseg.models.registry import DeeplySupervised

_PASS_THROUGH = (
    "Alias",
    "Add",
    "Upsample",
    "Slice",
    "ConstantPadNd",
    "Stack",
    "View",
    "UnsafeView",
    "Permute",
    "Clone",
    "ToCopy",
    "Unbind",
    "Select",
    "Squeeze",
    "Unsqueeze",
    "Expand",
    "Index",
    "Narrow",
)
_PRODUCERS = ("Convolution", "Addmm", "Linear")


def prior_logits(prior: float, n_outputs: int) -> Tensor:
    """Output biases ``(n_outputs,)`` that make the network predict foreground probability ``prior``.

    One output (sigmoid): ``log(prior / (1 - prior))``. Several (softmax): background
    ``log(1 - prior)``, each of the ``n_outputs - 1`` foreground classes ``log(prior / (n_outputs - 1))``.
    """
    if not 0.0 < prior < 1.0:
        raise ValueError(f"the foreground prior must be in (0, 1), got {prior}")
    if n_outputs == 1:
        return torch.tensor([math.log(prior / (1.0 - prior))])
    foreground = math.log(prior / (n_outputs - 1))
    return torch.tensor([math.log(1.0 - prior)] + [foreground] * (n_outputs - 1))


def output_biases(model: nn.Module, patch_size: Sequence[int]) -> list[list[nn.Parameter]]:
    """For each of ``model``'s outputs, the biases of the layers that produce it, nearest first.

    Args:
        model: a registered network, ``(B, 2, X, Y, Z) → (B, C, X, Y, Z)``.
        patch_size: ``(X, Y, Z)`` of the probe input.

    Raises:
        ValueError: an output not made by a convolution or linear layer with a bias.
    """
    probe = torch.zeros(1, 2, *patch_size)
    was_training = model.training
    # Training mode, where deep-supervision heads answer (MONAI's DynUNet); the probe must not move
    # batch-norm running statistics, so every buffer is put back afterwards.
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    model.train()
    try:
        with torch.enable_grad():
            outputs = model.forward_deep(probe) if isinstance(model, DeeplySupervised) else model(probe)
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    channels = model.out_channels
    per_output = []
    for index, output in enumerate(outputs):
        biases = _producer_biases(output.grad_fn, channels)
        if not biases:
            raise ValueError(
                f"{type(model).__name__}: output {index} is not made by a convolution or linear layer "
                f"with a bias of {channels} channels; cannot set its prior"
            )
        per_output.append(biases)
    return per_output


@torch.no_grad()
def set_output_prior(model: nn.Module, prior: float, patch_size: Sequence[int]) -> int:
    """Start ``model`` at foreground probability ``prior``: the nearest bias of each output becomes
    :func:`prior_logits`, any further one it adds to (a residual branch) zero. Returns the biases set."""
    logits = prior_logits(prior, model.out_channels)
    done: set[int] = set()
    for nearest, *others in output_biases(model, patch_size):
        for bias, value in [(nearest, logits), *((other, torch.zeros_like(logits)) for other in others)]:
            if id(bias) not in done:
                bias.copy_(value.to(bias))
                done.add(id(bias))
    return len(done)


def _producer_biases(node: object, channels: int) -> list[nn.Parameter]:
    """Biases of the convolution / linear nodes reached from ``node`` through pass-through operations."""
    biases: list[nn.Parameter] = []
    pending, seen = [node], set()
    while pending:
        current = pending.pop(0)  # breadth first: the nearest producer comes first
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        name = type(current).__name__
        if name.startswith(_PRODUCERS):
            biases += [
                parent.variable
                for parent, _ in current.next_functions
                if type(parent).__name__ == "AccumulateGrad" and tuple(parent.variable.shape) == (channels,)
            ]
        elif name.startswith(_PASS_THROUGH):
            pending += [parent for parent, _ in current.next_functions]
    return biases
