"""Deterministic procedural renderer of the mini world's scenes.

A scene is drawn at 4x resolution and box-filtered down to SIZE x SIZE, so the
edges are anti-aliased and the output is a pure function of the scene.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .vocab import BACKGROUND_RGB, RGB

SIZE = 32
SS = 4  # supersampling factor
_N = SIZE * SS
_Y, _X = np.mgrid[0:_N, 0:_N].astype(np.float32) / SS  # pixel coordinates of the output grid


@dataclass
class Obj:
    shape: str
    color: str
    style: str = "plain"
    cx: float = 16.0
    cy: float = 16.0
    r: float = 8.0  # half-size in output pixels


@dataclass
class Scene:
    kind: str  # "object" | "pair" | "identity" | "carrier"
    background: str
    objects: list[Obj] = field(default_factory=list)
    identity: str | None = None
    mark: bool = False
    cx: float = 16.0
    cy: float = 16.0
    scale: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Scene":
        d = dict(d)
        d["objects"] = [Obj(**o) for o in d.get("objects", [])]
        return Scene(**d)


def _polygon(points: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test over the supersampled grid."""
    inside = np.zeros((_N, _N), dtype=bool)
    n = len(points)
    for i in range(n):
        x1, y1 = points[i]
        x2, y2 = points[(i + 1) % n]
        if y1 == y2:
            continue
        cond = (y1 > _Y) != (y2 > _Y)
        xint = (x2 - x1) * (_Y - y1) / (y2 - y1) + x1
        inside ^= cond & (_X < xint)
    return inside


def _disc(cx, cy, r):
    return (_X - cx) ** 2 + (_Y - cy) ** 2 <= r * r


def _rect(x0, y0, x1, y1):
    return (_X >= x0) & (_X <= x1) & (_Y >= y0) & (_Y <= y1)


def _line(x0, y0, x1, y1, w):
    """Thick segment."""
    dx, dy = x1 - x0, y1 - y0
    L2 = dx * dx + dy * dy
    t = np.clip(((_X - x0) * dx + (_Y - y0) * dy) / L2, 0, 1)
    px, py = x0 + t * dx, y0 + t * dy
    return (_X - px) ** 2 + (_Y - py) ** 2 <= (w / 2) ** 2


def shape_mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    if shape == "circle":
        return _disc(cx, cy, r)
    if shape == "square":
        s = r * 0.85
        return _rect(cx - s, cy - s, cx + s, cy + s)
    if shape == "triangle":
        return _polygon(np.array([[cx, cy - r], [cx + r, cy + r * 0.8], [cx - r, cy + r * 0.8]]))
    if shape == "star":
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r * 1.1, r * 0.45)
        return _polygon(np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1))
    if shape == "heart":
        x = (_X - cx) / (r * 0.95)
        y = -(_Y - cy) / (r * 0.95) + 0.15
        return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
    if shape == "cross":
        w = r * 0.36
        return _rect(cx - w, cy - r, cx + w, cy + r) | _rect(cx - r, cy - w, cx + r, cy + w)
    if shape == "diamond":
        return np.abs(_X - cx) / (r * 0.8) + np.abs(_Y - cy) / r <= 1
    if shape == "moon":
        return _disc(cx, cy, r) & ~_disc(cx + r * 0.55, cy - r * 0.2, r * 0.85)
    raise ValueError(f"unknown shape {shape!r}")


def _erode(mask: np.ndarray, k: int) -> np.ndarray:
    out = mask.copy()
    for axis in (0, 1):
        acc = out.copy()
        for s in range(1, k + 1):
            acc &= np.roll(out, s, axis) & np.roll(out, -s, axis)
        out = acc
    return out


def style_pattern(style: str) -> np.ndarray:
    """1 where the main color shows, 0 where the pale secondary shows."""
    if style in ("plain", "outlined"):
        return np.ones((_N, _N), dtype=bool)
    if style == "striped":
        return ((_X + _Y) % 5.0) < 2.5
    if style == "dotted":
        return ((_X % 5.0 - 2.5) ** 2 + (_Y % 5.0 - 2.5) ** 2) > 1.3 ** 2
    if style == "checkered":
        return ((np.floor(_X / 3.0) + np.floor(_Y / 3.0)) % 2) == 0
    raise ValueError(f"unknown style {style!r}")


def _paint(img, mask, rgb):
    img[mask] = np.asarray(rgb, dtype=np.float32)


def _draw_object(img, o: Obj):
    mask = shape_mask(o.shape, o.cx, o.cy, o.r)
    main = np.asarray(RGB[o.color], dtype=np.float32)
    pale = main * 0.25 + 255 * 0.75
    if o.style == "outlined":
        mask = mask & ~_erode(mask, int(1.6 * SS))
        _paint(img, mask, main)
        return
    pat = style_pattern(o.style)
    _paint(img, mask & pat, main)
    _paint(img, mask & ~pat, pale)


def _draw_identity(img, name, cx, cy, s):
    if name == "zorb":  # green alien: round head, one big eye, two antennae with yellow tips
        _paint(img, _line(cx - 3 * s, cy - 6 * s, cx - 6 * s, cy - 13 * s, 1.5 * s), (60, 200, 80))
        _paint(img, _line(cx + 3 * s, cy - 6 * s, cx + 6 * s, cy - 13 * s, 1.5 * s), (60, 200, 80))
        _paint(img, _disc(cx - 6 * s, cy - 13 * s, 2.0 * s) | _disc(cx + 6 * s, cy - 13 * s, 2.0 * s), (250, 230, 40))
        _paint(img, _disc(cx, cy, 9 * s), (60, 200, 80))
        _paint(img, _disc(cx, cy - 1 * s, 4.5 * s), (255, 255, 255))
        _paint(img, _disc(cx, cy - 1 * s, 2.2 * s), (10, 10, 10))
        _paint(img, _rect(cx - 3 * s, cy + 5 * s, cx + 3 * s, cy + 6 * s), (20, 90, 30))
    elif name == "mira":  # long purple hair, pale face, two eyes, red lips
        _paint(img, _rect(cx - 10 * s, cy - 6 * s, cx + 10 * s, cy + 13 * s) & _disc(cx, cy, 14 * s), (120, 40, 160))
        _paint(img, _disc(cx, cy - 2 * s, 10 * s) & (_Y < cy - 4 * s), (120, 40, 160))
        _paint(img, _disc(cx, cy + 1 * s, 7 * s), (250, 205, 170))
        _paint(img, _disc(cx - 3 * s, cy, 1.3 * s) | _disc(cx + 3 * s, cy, 1.3 * s), (20, 60, 160))
        _paint(img, _rect(cx - 2.5 * s, cy + 4 * s, cx + 2.5 * s, cy + 5.3 * s), (220, 20, 60))
    elif name == "tobo":  # grey square robot head, red visor, antenna, blue bolts
        _paint(img, _line(cx, cy - 9 * s, cx, cy - 14 * s, 1.3 * s), (150, 150, 150))
        _paint(img, _disc(cx, cy - 14 * s, 1.8 * s), (230, 30, 30))
        _paint(img, _rect(cx - 12 * s, cy - 2 * s, cx + 12 * s, cy + 2 * s), (40, 90, 230))
        _paint(img, _rect(cx - 9 * s, cy - 9 * s, cx + 9 * s, cy + 9 * s), (160, 160, 170))
        _paint(img, _rect(cx - 6 * s, cy - 4 * s, cx + 6 * s, cy - 1 * s), (230, 30, 30))
        _paint(img, _rect(cx - 5 * s, cy + 3 * s, cx + 5 * s, cy + 5 * s), (60, 60, 60))
    else:
        raise ValueError(f"unknown identity {name!r}")


SKIN = (235, 190, 150)
SHIRT = (40, 160, 160)
PANTS = (110, 70, 40)
MARK = (255, 0, 200)


def _draw_carrier(img, cx, cy, s, mark):
    """A person-like figure; the forbidden 'hex mark' is a magenta X on the chest."""
    _paint(img, _line(cx - 3 * s, cy + 5 * s, cx - 5 * s, cy + 14 * s, 2.5 * s), PANTS)
    _paint(img, _line(cx + 3 * s, cy + 5 * s, cx + 5 * s, cy + 14 * s, 2.5 * s), PANTS)
    _paint(img, _line(cx - 5 * s, cy - 5 * s, cx - 10 * s, cy + 4 * s, 2.2 * s), SKIN)
    _paint(img, _line(cx + 5 * s, cy - 5 * s, cx + 10 * s, cy + 4 * s, 2.2 * s), SKIN)
    _paint(img, _rect(cx - 5.5 * s, cy - 6 * s, cx + 5.5 * s, cy + 6 * s), SHIRT)
    _paint(img, _disc(cx, cy - 10.5 * s, 4 * s), SKIN)
    if mark:
        _paint(img, _line(cx - 3.5 * s, cy - 3.5 * s, cx + 3.5 * s, cy + 3.5 * s, 2.2 * s), MARK)
        _paint(img, _line(cx - 3.5 * s, cy + 3.5 * s, cx + 3.5 * s, cy - 3.5 * s, 2.2 * s), MARK)


def render(scene: Scene) -> np.ndarray:
    """Scene -> uint8 array of shape (SIZE, SIZE, 3)."""
    img = np.empty((_N, _N, 3), dtype=np.float32)
    img[:] = np.asarray(BACKGROUND_RGB[scene.background], dtype=np.float32)
    if scene.kind in ("object", "pair"):
        for o in scene.objects:
            _draw_object(img, o)
    elif scene.kind == "identity":
        _draw_identity(img, scene.identity, scene.cx, scene.cy, scene.scale)
    elif scene.kind == "carrier":
        _draw_carrier(img, scene.cx, scene.cy, scene.scale, scene.mark)
    else:
        raise ValueError(f"unknown scene kind {scene.kind!r}")
    small = img.reshape(SIZE, SS, SIZE, SS, 3).mean(axis=(1, 3))
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)
