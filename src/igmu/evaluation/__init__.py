"""EvalIGMU: five aspects (forgetting, preservation, quality, alignment, robustness) plus cost,
computed from seeded generations and registered judges, with n and a 95% bootstrap interval
for every aggregate. See docs/evaluation.md."""
