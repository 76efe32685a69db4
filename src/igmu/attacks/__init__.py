"""Robustness probes: adversarial prompt attacks, used by EvalIGMU's robustness aspect. The prompt inner loop
they share with the adversarial unlearning methods lives below both, in diffusion/prompt_attack.py."""
