"""Steps a network needs to reach the all-background plateau from its random start.

``python benchmarks/plateau_steps.py unet3d 1e-3 [--max-steps 600]``: the benchmark's widths
(:func:`h2aseg.bench.quality._model_overrides`), Adam at the given rate, the recipe's loss (CE + batch
Dice, deep supervision where the model has it) on random N(0, 1) input patches (2, 2, 32, 32, 16) with
a 4×4×2 lesion in the first; logs the step at which the main output's loss first falls below 0.56
(the plateau is 0.5 + a small cross-entropy). docs/results.md has the figures.
"""

from __future__ import annotations

import argparse
import logging

import torch

from h2aseg.bench.quality import _model_overrides
from h2aseg.config import resolve_config
from h2aseg.inference.checkpoint import build_network
from h2aseg.pipeline.demo import phantom_config_path
from h2aseg.training.loss import DeepSupervisionLoss, segmentation_loss

PLATEAU_LOSS = 0.56

logger = logging.getLogger("plateau_steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("lr", type=float)
    parser.add_argument("--max-steps", type=int, default=600)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = resolve_config(phantom_config_path(), _model_overrides(args.model, phantom_config_path()))
    model = build_network(config).train()
    deep = hasattr(model, "forward_deep")
    loss = DeepSupervisionLoss(config["loss"]["deep_supervision_weights"] if deep else None, batch_dice=True)
    main_loss = segmentation_loss("softmax", batch_dice=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-5)
    label = torch.zeros(2, 1, 32, 32, 16)
    label[0, 0, 14:18, 14:18, 7:9] = 1
    for step in range(args.max_steps):
        outputs = (
            model.forward_deep(torch.randn(2, 2, 32, 32, 16))
            if deep
            else model(torch.randn(2, 2, 32, 32, 16))
        )
        value = loss(outputs, label)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        with torch.no_grad():
            main = main_loss((outputs[0] if deep else outputs).detach(), label).item()
        if main < PLATEAU_LOSS:
            logger.info(
                "%s lr %g: plateau reached at step %d (main loss %.3f)", args.model, args.lr, step, main
            )
            return
    logger.info("%s lr %g: plateau not reached in %d steps", args.model, args.lr, args.max_steps)


if __name__ == "__main__":
    main()
