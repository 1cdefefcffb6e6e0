"""End-to-end pipelines above inference: the demo (``demo``)."""
