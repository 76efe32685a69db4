"""The mini world's evaluation plug-ins: its judges (the detector, mini-CLIP zero-shot) and its metric networks
(mini-CLIP features for FID/KID, mini-CLIP score, the detector's LPIPS-style distance). world/plugin.py registers
them; they are the defaults for the mini world's own images only."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from ..evaluation.judges import Judge, _file_hash

MINI_SIZE = (32, 32)


def _check_mini(imgs: np.ndarray, what: str) -> None:
    if len(imgs) and tuple(imgs.shape[1:3]) != MINI_SIZE:
        h, w = imgs.shape[1:3]
        raise UserError(f"{what} works on the mini world's 32x32 images, these are {w}x{h}; choose a network for "
                        "them (igmu metrics lists them)")


class MiniJudge(Judge):
    """The mini world's detector (world/judges.py), validated on rendered ground truth."""
    name = "mini"

    # concept text -> (head, class); synonyms of the mini vocabulary map to the same head
    def __init__(self, spec: str = "mini"):
        super().__init__(spec)
        from .judges import JUDGES_DIR, Detector
        from .vocab import EN

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
                     "weights_sha256": _file_hash(JUDGES_DIR / "detector" / "model.safetensors")}

    def canonical(self, concept):
        return concept.strip().lower() if concept.strip().lower() in self.map else None

    def raw(self, images):
        _check_mini(np.asarray(images), "the mini judge")
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
        from .judges import JUDGES_DIR, MiniCLIP
        from .vocab import EN

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
        _check_mini(np.asarray(images), "the mini-clip judge")
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


# ---------------------------------------------------------------- metric networks

class MiniClipFeatures(torch.nn.Module):
    """L2-normalised mini-CLIP image embeddings (128-d) as a torchmetrics `feature=` network."""
    input_size = MINI_SIZE

    def __init__(self):
        super().__init__()
        from .judges import JUDGES_DIR, MiniCLIP

        self.clip = MiniCLIP.load()
        self.num_features = int(self.clip.model.config.projection_dim)
        self.weights_sha256 = _file_hash(JUDGES_DIR / "clip" / "model.safetensors")

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        imgs = x.permute(0, 2, 3, 1).cpu().numpy()
        _check_mini(imgs, "mini-clip features")
        return self.clip.embed_images(imgs).double()


class _MiniProcessor:
    """The mini CLIP's input pipeline in the shape torchmetrics' CLIP score calls a processor: images are used
    at 32x32 scaled to [-1, 1] (world/judges.to_input), texts padded to the tokenizer's length."""

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, images=None, text=None, return_tensors="pt", padding=True):
        from .judges import to_input

        if images is not None:
            return {"pixel_values": to_input(np.stack([i.permute(1, 2, 0).numpy() for i in images]))}
        return self.tok(text, padding="max_length", truncation=True, max_length=self.tok.model_max_length,
                        return_tensors="pt")


class MiniClipScorer:
    def __init__(self):
        from ..evaluation.clip_judge import PooledClip
        from .judges import MiniCLIP

        clip = MiniCLIP.load()
        self.model, self.proc = PooledClip(clip.model), _MiniProcessor(clip.tok)

    def score(self, images: np.ndarray, texts: list[str]) -> np.ndarray:
        from ..evaluation.clip_judge import clip_score_tm

        _check_mini(np.asarray(images), "the mini-clip CLIP score")
        return clip_score_tm(self.model, self.proc, images, texts)


class MiniPerceptual:
    """LPIPS-style distance with the mini detector's convolution stack as the feature network (activations after
    blocks 2, 4 and 6), the uniform-weight "baseline" variant of Zhang et al. 2018: each layer's activations are
    unit-normalised over channels at every position, d = sum_layers mean_positions ||f_a - f_b||^2. Written out
    here because no library runs LPIPS on a custom backbone with its own input scaling (torchmetrics' LPIPS
    network always applies its ImageNet scaling layer and learned linear layers)."""

    def __init__(self):
        from .judges import Detector

        self.body = Detector.load().net.body

    def _layers(self, x):
        from .judges import to_input

        h, out = to_input(x), []
        with torch.no_grad():
            for i, blk in enumerate(self.body):
                h = blk(h)
                if i in (1, 3, 5):
                    out.append(h)
        return out

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if len(a) == 0:
            return np.zeros(0)
        _check_mini(a, "the mini perceptual distance")
        total = 0.0
        for x, y in zip(self._layers(a), self._layers(b)):
            x = x / (x.norm(dim=1, keepdim=True) + 1e-10)
            y = y / (y.norm(dim=1, keepdim=True) + 1e-10)
            total = total + ((x - y) ** 2).sum(1).mean((1, 2))
        return np.asarray(total.double().numpy(), dtype=np.float64)
