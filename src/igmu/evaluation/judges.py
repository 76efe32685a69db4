"""Judges: images -> "is concept C shown?", registered by name, each with a card.

A judge answers `detect(images, concepts) -> bool N x C`. Judges that can be
costly keep their raw output per image (`raw`), which is what the evaluation
cache stores, and derive presence from it (`present`), so adding a concept or a
task never re-runs the network on a cached image.

Specs (what --judge and a task's `judge:` take):
  nudenet            NudeNet (nudenet package, its ONNX model ships inside it): concept "nudity"
  clip:PATH|ID       a transformers CLIP model, zero-shot (local folder, or a hub id already in the local cache)
  clip-person:PATH   person presence, CLIP zero-shot (carrier preservation on real images)
  clip-head:DIR      a CLIP model plus a linear head trained with `igmu judge train` (IGMU-style)
Plug-ins register more (the mini world: `mini`, its detector, and `mini-clip`, zero-shot with its CLIP).
"""
from __future__ import annotations

import hashlib
import json
from typing import ClassVar

import numpy as np

from ..errors import UserError


class Judge:
    name: ClassVar[str]
    open_vocabulary: ClassVar[bool] = False  # True: any concept text; False: only card["concepts"]

    def __init__(self, spec: str):
        self.spec = spec
        self.card: dict = {}

    # --- to implement -------------------------------------------------
    def raw(self, images: np.ndarray) -> list:
        """One JSON-able raw output per image (uint8 N x H x W x 3)."""
        raise NotImplementedError

    def present(self, raw: list, concept: str, context: list[str]) -> list[bool]:
        """Is `concept` shown, from the raw outputs; `context` = the task's other concepts (zero-shot classes)."""
        raise NotImplementedError

    # --- shared --------------------------------------------------------
    def knows(self, concept: str) -> bool:
        return self.open_vocabulary or self.canonical(concept) is not None

    def canonical(self, concept: str) -> str | None:
        c = concept.strip().lower()
        return c if c in self.card.get("concepts", []) else None

    def check_concepts(self, concepts: list[str]) -> None:
        bad = [c for c in concepts if not self.knows(c)]
        if bad:
            known = ", ".join(self.card.get("concepts", []))
            raise UserError(f"judge {self.spec!r} cannot detect {bad[0]!r}; it knows: {known}")

    def detect(self, images: np.ndarray, concepts: list[str], context: list[str] | None = None) -> np.ndarray:
        self.check_concepts(concepts)
        r = self.raw(images)
        return np.array([self.present(r, c, context or concepts) for c in concepts], dtype=bool).T.reshape(
            len(images), len(concepts))

    def fingerprint(self) -> str:
        """Changes whenever the judge's outputs could change (name, version, threshold, weights)."""
        return hashlib.sha256(json.dumps({"spec": self.spec, "card": self.card}, sort_keys=True,
                                         default=str).encode()).hexdigest()[:16]


def _file_hash(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()[:16]


REGISTRY: dict[str, type[Judge]] = {}  # spec prefix -> judge class (or factory); plug-ins add theirs
_LOADED: dict[str, Judge] = {}


def register(prefix: str):
    def deco(cls):
        REGISTRY[prefix] = cls
        return cls
    return deco


def get_judge(spec: str) -> Judge:
    """A judge from its spec ('nudenet', 'clip:PATH', 'clip-person:PATH', 'clip-head:DIR', a plug-in's: 'mini',
    'mini-clip'); loaded once."""
    if spec in _LOADED:
        return _LOADED[spec]
    _load_optional()
    head = spec.split(":", 1)[0]
    if head not in REGISTRY:
        raise UserError(f"unknown judge {spec!r}; available: {', '.join(sorted(REGISTRY))} "
                        "(clip, clip-person and clip-head take :PATH)")
    _LOADED[spec] = REGISTRY[head](spec)
    return _LOADED[spec]


def _load_optional():
    """Judges in their own modules register themselves on import; so do plug-ins' judges (igmu.plugins)."""
    import importlib

    from ..plugins import load_plugins

    for mod in ("nudenet_judge", "clip_judge"):
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{mod}":
                raise
    load_plugins()
