"""End-to-end pipelines above inference and training: ``predict`` (the library side of
``h2aseg predict``), ``demo`` and ``analyze`` (what TAMW selects in a trained model)."""
