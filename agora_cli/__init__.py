"""agora: AGORA group distillation (arXiv 2507.21166) for your own ensemble of small models."""

__version__ = "0.1.0"
