"""End-to-end jobs built on the library: analysis of trained models."""
