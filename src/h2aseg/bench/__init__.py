"""Benchmarks: speed, memory and scaling; the paper's tables on the synthetic cohort."""
