"""EvalIGMU: five aspects (forgetting, preservation, quality, alignment, robustness) plus cost,
computed from seeded generations and registered judges, with n and a 95% bootstrap interval
for every aggregate. See docs/evaluation.md."""

from . import nets as _nets  # noqa: E402,F401  registers the real metric networks in registry.py
