"""End-to-end pipelines above inference and training: ``predict`` (the library side of
``h2aseg predict``, sharded across ranks by :mod:`h2aseg.pipeline.sharding`), ``demo`` and
``analyze`` (what TAMW selects in a trained model)."""
