"""A small Noise2Quality configuration shared by the model tests (a few ms per training step)."""

from ctqa.models.networks import QualityNetConfig

SMALL = QualityNetConfig(architecture="unet", inputs="ct+hpf", dose_head=True, features=(8, 16, 24), space_to_depth=2)
