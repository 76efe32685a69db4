"""igmu: machine unlearning for image generation models."""
__version__ = "0.1.0"
