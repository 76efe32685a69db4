"""Unlearning methods: one file per algorithm, registered by name (see base.py)."""
from .base import REGISTRY, EraseRequest, Eraser, MethodConfig, get_method, register  # noqa: F401
from . import esd, uce  # noqa: F401  (registers)
