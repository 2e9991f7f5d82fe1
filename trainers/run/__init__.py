"""A run's I/O: the run folder (config, metrics, evaluations, summary), checkpoints, W&B tracking, plots, and the
console (third-party output to the run folder's log)."""
