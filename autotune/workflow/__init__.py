"""A run's orchestration: the stages of `autotune run` and `train`, workers sharing a study, the final run and what report.json holds of it."""
