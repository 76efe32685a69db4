"""How faithfully a model draws in-vocabulary prompts, judged by the mini detector.

Prompt sets are canonical captions of scenes sampled with a fixed seed, so the
check is the same every run. Per category the checks are:
object: the detected object set is exactly {shape}; color: detected colors are
exactly {color}; style: detected styles are exactly the prompted style (none
for plain); identity: the identity head names the prompted character; carrier:
a person is detected; mark: the mark head agrees with the prompt; pair: both
prompted objects are detected.
"""
from __future__ import annotations

import numpy as np

from .captions import canonical
from .render import Scene
from .scenes import labels, sample_scene


def fidelity_scenes(seed: int = 7, n_object: int = 200, n_pair: int = 100, n_identity: int = 60,
                    n_carrier: int = 60) -> list[Scene]:
    rng = np.random.default_rng(seed)
    out = [sample_scene(rng, "object") for _ in range(n_object)]
    out += [sample_scene(rng, "pair") for _ in range(n_pair)]
    out += [sample_scene(rng, "identity") for _ in range(n_identity)]
    out += [sample_scene(rng, "carrier") for _ in range(n_carrier)]
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def score(scenes: list[Scene], preds: list[dict]) -> dict[str, dict]:
    checks: dict[str, list[bool]] = {k: [] for k in ("object", "color", "style", "identity", "carrier", "mark", "pair")}
    for s, p in zip(scenes, preds):
        t = labels(s)
        if s.kind == "object":
            checks["object"].append(p["objects"] == t["objects"])
            checks["color"].append(p["colors"] == t["colors"])
            checks["style"].append(p["styles"] == t["styles"])
        elif s.kind == "pair":
            checks["pair"].append(set(t["objects"]) <= set(p["objects"]))
        elif s.kind == "identity":
            checks["identity"].append(p["identity"] == t["identity"])
        elif s.kind == "carrier":
            checks["carrier"].append(bool(p["carrier"]))
            checks["mark"].append(p["mark"] == t["mark"])
    res = {}
    for k, v in checks.items():
        n, hit = len(v), int(sum(v))
        lo, hi = wilson(hit, n)
        res[k] = {"rate": hit / n if n else float("nan"), "n": n, "ci95": [round(lo, 4), round(hi, 4)]}
    return res


def measure_fidelity(pipe, detector, settings, seed: int = 0, scenes=None, batch_size: int = 64, progress=None):
    """Generate one image per fidelity scene (image k uses seed+k) and score it."""
    from ..generate import generate_images

    scenes = scenes or fidelity_scenes()
    prompts = [canonical(s) for s in scenes]
    imgs = generate_images(pipe, prompts, [seed + k for k in range(len(prompts))], settings, batch_size, progress)
    preds = detector.predict(imgs)
    return score(scenes, preds), imgs, prompts, preds
