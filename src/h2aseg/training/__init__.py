"""Training: CE/BCE + Dice deep-supervision loss (``loss``), the Lightning
data module (``datamodule``) and module (``module``), and ``train.train`` for one run.

Import the submodules directly (``from h2aseg.training.train import train``); this package imports
nothing heavy so that the CLI stays fast.
"""
