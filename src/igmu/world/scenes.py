"""Sampling scenes and their ground-truth labels."""
from __future__ import annotations

import numpy as np

from .render import Obj, Scene
from .vocab import BACKGROUNDS, COLORS, IDENTITIES, SHAPES, STYLES

KIND_P = {"object": 0.45, "pair": 0.2, "identity": 0.15, "carrier": 0.2}


def sample_style(rng: np.random.Generator, p_plain: float = 0.4) -> str:
    return "plain" if rng.random() < p_plain else STYLES[rng.integers(len(STYLES))]


def sample_scene(rng: np.random.Generator, kind: str | None = None) -> Scene:
    if kind is None:
        kind = rng.choice(list(KIND_P), p=list(KIND_P.values()))
    bg = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    j = lambda a: float(rng.uniform(-a, a))  # noqa: E731
    if kind == "object":
        o = Obj(SHAPES[rng.integers(8)], COLORS[rng.integers(6)], sample_style(rng),
                16 + j(2.5), 16 + j(2.5), 9.0 + j(1.5))
        return Scene("object", bg, [o])
    if kind == "pair":
        s = rng.choice(len(SHAPES), 2, replace=False)
        c = rng.choice(len(COLORS), 2, replace=False)
        objs = [Obj(SHAPES[s[i]], COLORS[c[i]], sample_style(rng, 0.6), 8.5 + 15 * i + j(1.0), 16 + j(3.0),
                    6.2 + j(0.6)) for i in range(2)]
        return Scene("pair", bg, objs)
    if kind == "identity":
        return Scene("identity", bg, identity=IDENTITIES[rng.integers(3)], cx=16 + j(1.5), cy=17 + j(1.5),
                     scale=0.95 + j(0.08))
    if kind == "carrier":
        return Scene("carrier", bg, mark=bool(rng.random() < 0.5), cx=16 + j(2.0), cy=17 + j(1.0),
                     scale=1.0 + j(0.06))
    raise ValueError(kind)


def labels(scene: Scene) -> dict:
    """Ground truth, in the judge's label space."""
    return {
        "objects": sorted({o.shape for o in scene.objects}),
        "colors": sorted({o.color for o in scene.objects}),
        "styles": sorted({o.style for o in scene.objects if o.style != "plain"}),
        "identity": scene.identity or "none",
        "carrier": scene.kind == "carrier",
        "mark": bool(scene.mark),
        "background": scene.background,
    }
