"""Judges: images -> "is concept C shown?", registered by name, each with a card.

A judge answers `detect(images, concepts) -> bool N x C`. Judges that can be
costly keep their raw output per image (`raw`), which is what the evaluation
cache stores, and derive presence from it (`present`), so adding a concept or a
task never re-runs the network on a cached image.

Specs (what --judge and a task's `judge:` take):
  mini            the mini world's detector (objects, colors, styles, identities, the carrier figure, the hex mark)
  mini-clip       zero-shot with the mini CLIP: the concept's caption against the task's other concepts
  nudenet         NudeNet (nudenet package, its ONNX model ships inside it): concept "nudity"
  clip:PATH|ID    a transformers CLIP model, zero-shot (local folder, or a hub id already in the local cache)
  clip-head:DIR   a CLIP model plus a linear head trained with `igmu judge train` (IGMU-style)
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


class MiniJudge(Judge):
    """The mini world's detector (world/judges.py), validated on rendered ground truth."""
    name = "mini"

    # concept text -> (head, class); synonyms of the mini vocabulary map to the same head
    def __init__(self, spec: str = "mini"):
        super().__init__(spec)
        from ..world.judges import Detector
        from ..world.vocab import EN

        self.det = Detector.load()
        self.map: dict[str, tuple[str, str]] = {}
        for kind, head in (("shape", "objects"), ("color", "colors"), ("style", "styles"), ("identity", "identity")):
            for canon, syns in EN[kind].items():
                if canon == "plain":
                    continue
                for s in syns:
                    self.map[s] = (head, canon)
        for s in EN["person"]:
            self.map[s] = ("carrier", "carrier")
        for s in EN["mark"] + ["mark"]:
            self.map[s] = ("mark", "mark")
        c = self.det.card
        self.card = {"name": "mini", "what": "mini-world detector: objects, colors, styles, identities, the "
                     "carrier figure (person), the hex mark", "version": c.get("version"),
                     "threshold": c.get("threshold"), "concepts": sorted(self.map),
                     "validated": c.get("accuracy", c.get("test_accuracy")),
                     "validation": "per-head exact-match accuracy on fresh renders (scripts/bench_judges.py)",
                     "weights_sha256": _file_hash(self.det_path())}

    @staticmethod
    def det_path():
        from ..world.judges import JUDGES_DIR
        return JUDGES_DIR / "detector" / "model.safetensors"

    def canonical(self, concept):
        return concept.strip().lower() if concept.strip().lower() in self.map else None

    def raw(self, images):
        preds = self.det.predict(images)
        return [{k: v for k, v in p.items() if not k.endswith("_p")} for p in preds]

    def present(self, raw, concept, context):
        head, cls = self.map[self.canonical(concept)]
        if head in ("objects", "colors", "styles"):
            return [cls in r[head] for r in raw]
        if head == "identity":
            return [r["identity"] == cls for r in raw]
        return [bool(r[head]) for r in raw]


class MiniClipJudge(Judge):
    """Zero-shot with the mini CLIP. A concept of the mini vocabulary is shown when its text is more
    similar to the image than every alternative of the same kind (a shape against the other shapes, a
    style against the other styles and "plain", "hex mark" as "a person with a hex mark" against "a
    person", ...); any other concept competes against the task's other concepts (context).
    Raw output: the image embedding, so new concepts never re-run the image tower."""
    name = "mini-clip"
    open_vocabulary = True

    def __init__(self, spec: str = "mini-clip"):
        super().__init__(spec)
        from ..world.judges import JUDGES_DIR, MiniCLIP
        from ..world.vocab import EN

        self.clip = MiniCLIP.load()
        self.alts: dict[str, tuple[str, list[str]]] = {}  # concept -> (its text, alternatives' texts)
        for kind in ("shape", "color", "style", "identity"):
            canon = list(EN[kind])
            for c in canon:
                if c != "plain":
                    self.alts[c] = (c, [o for o in canon if o != c])
        self.alts["person"] = ("a person", ["a red circle", "a blue square", "zorb", "mira", "tobo"])
        self.alts["hex mark"] = ("a person with a hex mark", ["a person"])
        self._text: dict[str, np.ndarray] = {}
        self.card = {"name": "mini-clip", "what": "zero-shot concept presence with the mini CLIP (the concept's text "
                     "against same-kind alternatives, or against the task's other concepts)",
                     "version": str(self.clip.card.get("version", "1")), "threshold": "argmax",
                     "concepts": "any text", "validated": None,
                     "validation": "agreement with the renderer: scripts/bench_eval.py --judges",
                     "weights_sha256": _file_hash(JUDGES_DIR / "clip" / "model.safetensors")}

    def _emb(self, texts):
        miss = [t for t in texts if t not in self._text]
        if miss:
            for t, e in zip(miss, self.clip.embed_texts(miss).numpy()):
                self._text[t] = e
        return np.stack([self._text[t] for t in texts])

    def raw(self, images):
        return [e.tolist() for e in self.clip.embed_images(images).numpy().round(5)]

    def present(self, raw, concept, context):
        c = concept.strip().lower()
        if c in self.alts:
            text, others = self.alts[c]
        else:
            text, others = c, [o for o in dict.fromkeys(context) if o.strip().lower() != c]
        if not others:
            raise UserError(f"the mini-clip judge needs alternatives to {concept!r}; add concepts to the task "
                            "or use the mini judge")
        te = self._emb([text] + others)
        return list((np.asarray(raw, dtype=np.float32) @ te.T).argmax(1) == 0)


def _file_hash(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()[:16]


REGISTRY: dict[str, type[Judge]] = {"mini": MiniJudge, "mini-clip": MiniClipJudge}
_LOADED: dict[str, Judge] = {}


def register(prefix: str):
    def deco(cls):
        REGISTRY[prefix] = cls
        return cls
    return deco


def get_judge(spec: str) -> Judge:
    """A judge from its spec ('mini', 'mini-clip', 'nudenet', 'clip:PATH', 'clip-head:DIR'); loaded once."""
    if spec in _LOADED:
        return _LOADED[spec]
    _load_optional()
    head = spec.split(":", 1)[0]
    if head not in REGISTRY:
        raise UserError(f"unknown judge {spec!r}; available: {', '.join(sorted(REGISTRY))} "
                        "(clip and clip-head take :PATH)")
    _LOADED[spec] = REGISTRY[head](spec)
    return _LOADED[spec]


def _load_optional():
    """Judges in their own modules register themselves on import."""
    import importlib

    for mod in ("nudenet_judge", "clip_judge"):
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{mod}":
                raise
