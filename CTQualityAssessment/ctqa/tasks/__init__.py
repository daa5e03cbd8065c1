"""Tasks a model performs on a CT volume; each returns a dataclass (quality_map now; global_score,
series_class and denoise next)."""
