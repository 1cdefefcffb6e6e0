"""h2aseg.training."""
