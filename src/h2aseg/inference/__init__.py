"""h2aseg.inference."""
