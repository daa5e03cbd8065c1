"""A small Noise2Quality configuration shared by the model tests (a few ms per training step)."""

from ctqa.models.networks import QualityNetConfig

SMALL = QualityNetConfig(architecture="unet", inputs="ct+hpf", dose_head=True, features=(8, 16, 24), space_to_depth=2)


def save_tiny_score_model(path, head: str = "distribution", card: dict | None = None, seed: int = 0):
    """A tiny, randomly initialised (untrained) real ScoreNet saved as a global_score checkpoint at path (X ->
    X.json + X.safetensors); returns the card's path. For plumbing tests: its scores mean nothing."""
    import torch

    from ctqa.models.score_network import ScoreNetConfig, build_score_network, save_score_model

    config = ScoreNetConfig(
        backbone="cnn",
        head=head,
        bins=8,
        taus=(0.1, 0.2),
        space_to_depth=4,
        head_width=8,
        convnext_dims=(8, 16),
        convnext_depths=(1, 1),
    )
    torch.manual_seed(seed)
    return save_score_model(build_score_network(config).eval(), config, {"name": "tiny-score", **(card or {})}, path)


def save_tiny_denoiser(path, method: str = "supervised", seed: int = 0):
    """A width-8 DenoiseNet checkpoint at path (X -> X.json + X.safetensors) whose weights are perturbed so that its
    output differs from its input (an untrained denoiser is the identity); returns the card's path."""
    import torch

    from ctqa.models.denoise_network import DenoiseNetConfig, build_denoise_network, save_denoise_model

    torch.manual_seed(seed)
    net = build_denoise_network(DenoiseNetConfig(width=8))
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return save_denoise_model(net, {"name": "tiny-denoiser", "training": {"method": method}}, path)
