"""Robustness probes: adversarial prompt attacks (one shared inner loop, adversarial.py),
used by EvalIGMU's robustness aspect and by the adversarial unlearning methods."""
