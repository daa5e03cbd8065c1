"""Models: the torch-free registry (``registry``) and, importing torch, networks, checkpoints and inference."""
