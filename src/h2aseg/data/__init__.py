"""h2aseg.data."""
