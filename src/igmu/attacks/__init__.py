"""Robustness probes: one interface (base.py: registry, named budgets, one success and cost protocol), the shared
search mechanics (search.py) and one file per attack (unlearndiffatk, p4d, ringabell, cce, mma, noiseprobe). The
adversarial prompt inner loop that the adversarial unlearning methods train against lives below methods and
attacks, in diffusion/prompt_attack.py."""
