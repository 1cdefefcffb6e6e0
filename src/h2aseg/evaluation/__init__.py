"""h2aseg.evaluation."""
