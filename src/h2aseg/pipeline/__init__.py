"""End-to-end pipelines: prediction of many studies (sharded across ranks), demo, analysis."""
