"""CLIP judges: zero-shot with any transformers CLIP (`clip:PATH`), and a CLIP plus a trained linear head
(`clip-head:DIR`, IGMU-style: a judge trained and validated on a labelled image folder).

  clip:PATH_OR_ID   zero-shot: concept C is shown when "a photo of C" is the most similar caption among C and
                    the task's other concepts. PATH is a local folder (config.json, weights, tokenizer,
                    preprocessor_config.json); a hub id works only if it is already in the local HF cache
                    (nothing is ever downloaded).
  clip-head:DIR     a folder written by `train_head`: classes, a linear head on the CLIP image embedding,
                    and the held-out accuracy it reached (card.json).

`ClipJudge` also serves the evaluation's CLIP-based metrics: `clip_score(images, texts)` (100 * max(cos, 0))
and `image_features(images)` (projected image embeddings, for FID/KID-style feature statistics).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .judges import Judge, _file_hash, register

TEMPLATE = "a photo of {}"
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
HEAD_VERSION = "1"


# ---------------------------------------------------------------- loading a transformers CLIP

def _resolve(ref: str) -> Path:
    """A local folder, or a hub id already in the local cache -> its folder; else one UserError line."""
    hint = "pass a local folder: clip:/path/to/clip (config.json, weights, tokenizer, preprocessor_config.json)"
    p = Path(ref).expanduser()
    if p.is_dir():
        return p.resolve()
    looks_like_path = ref.startswith(("/", ".", "~")) or p.exists() or ref.count("/") > 1 or "\\" in ref
    if looks_like_path:
        raise UserError(f"no CLIP model folder at {ref}; {hint}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=ref, local_files_only=True))
    except Exception:
        raise UserError(f"CLIP model {ref!r} is not a local folder nor in the local Hugging Face cache "
                        f"(nothing is downloaded); {hint}") from None


def _weights_hash(folder: Path) -> str:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for b in iter(lambda: fh.read(1 << 22), b""):
                h.update(b)
    return h.hexdigest()[:16]


def _image_processor(folder: Path):
    try:  # the PIL backend everywhere: same preprocessing (and so same outputs) with or without torchvision
        from transformers import CLIPImageProcessorPil as Proc
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor as Proc
    return Proc.from_pretrained(str(folder), local_files_only=True)


def _first_line(e: Exception) -> str:
    s = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return s[:200]


def _as_list(images) -> list[np.ndarray]:
    """uint8 N x H x W x 3 array, or a list of H x W x 3 arrays of any sizes."""
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[None]
        return list(images)
    return [np.asarray(i) for i in images]


class ClipModel:
    """A loaded transformers CLIP: embeddings, CLIP score, image features."""

    def __init__(self, ref: str, device: str | None = None, batch: int = 64):
        from transformers import AutoTokenizer, CLIPModel

        self.ref = ref
        self.folder = _resolve(ref)
        cfg = self.folder / "config.json"
        if not cfg.is_file():
            raise UserError(f"{self.folder} has no config.json; pass a folder saved with CLIPModel.save_pretrained")
        from ..utils.validate import load_json

        conf = load_json(cfg, "CLIP config")
        mtype = conf.get("model_type") if isinstance(conf, dict) else None
        if mtype != "clip":
            raise UserError(f"{self.folder} holds a {mtype!r} model, not a CLIP model (model_type 'clip')")
        try:
            self.model = CLIPModel.from_pretrained(str(self.folder), local_files_only=True).eval()
            self.tok = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
            self.proc = _image_processor(self.folder)
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"cannot load a CLIP model from {self.folder} ({_first_line(e)}); pass a local folder "
                            "with config.json, the weights, the tokenizer and preprocessor_config.json") from None
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.batch = batch
        self.max_len = min(int(self.tok.model_max_length), int(self.model.config.text_config.max_position_embeddings))
        self.weights_sha256 = _weights_hash(self.folder)
        self._text_cache: dict[str, torch.Tensor] = {}

    @staticmethod
    def _pooled(o) -> torch.Tensor:
        return o.pooler_output if hasattr(o, "pooler_output") else o

    @torch.no_grad()
    def image_embeds(self, images) -> torch.Tensor:
        """Projected image embeddings (not normalised), float32 on the CPU."""
        from PIL import Image

        ims = _as_list(images)
        out = []
        for i in range(0, len(ims), self.batch):
            pil = [Image.fromarray(np.ascontiguousarray(x.astype(np.uint8))).convert("RGB")
                   for x in ims[i:i + self.batch]]
            px = self.proc(images=pil, return_tensors="pt")["pixel_values"].to(self.device)
            out.append(self._pooled(self.model.get_image_features(pixel_values=px)).float().cpu())
        if not out:
            return torch.zeros(0, self.model.config.projection_dim)
        return torch.cat(out)

    @torch.no_grad()
    def text_embeds(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (cached per text)."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        for i in range(0, len(todo), self.batch):
            chunk = todo[i:i + self.batch]
            ids = self.tok(chunk, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")
            o = self._pooled(self.model.get_text_features(input_ids=ids["input_ids"].to(self.device),
                                                          attention_mask=ids["attention_mask"].to(self.device)))
            for t, e in zip(chunk, F.normalize(o.float(), dim=-1).cpu()):
                self._text_cache[t] = e
        if not texts:
            return torch.zeros(0, self.model.config.projection_dim)
        return torch.stack([self._text_cache[t] for t in texts])

    def clip_score(self, images, texts: list[str]) -> np.ndarray:
        """CLIP score per (image, text) pair, computed by torchmetrics (see clip_score_tm)."""
        from transformers import CLIPProcessor

        if not hasattr(self, "_tm"):
            self._tm = (PooledClip(self.model), CLIPProcessor(image_processor=self.proc, tokenizer=self.tok))
        return clip_score_tm(*self._tm, images, texts, self.device, self.batch)


class PooledClip(torch.nn.Module):
    """A transformers CLIPModel as torchmetrics 1.9 calls it: transformers 5 returns a ModelOutput from
    get_image_features / get_text_features, torchmetrics expects the pooled tensor."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *a, **k):
        return ClipModel._pooled(self.model.get_image_features(*a, **k))

    def get_text_features(self, *a, **k):
        return ClipModel._pooled(self.model.get_text_features(*a, **k))


@torch.no_grad()
def clip_score_tm(model, processor, images, texts: list[str], device: str = "cpu", batch: int = 64) -> np.ndarray:
    """CLIP score per (image, text) pair, max(100 * cos, 0) (Hessel et al. 2021, w = 1), by torchmetrics' CLIPScore
    update step (`_clip_score_update`: its processor call, feature normalisation, caption truncation). The
    CLIPScore metric itself returns only the batch mean; IGMU's README patches torchmetrics for per-image scores,
    here the update step is called directly and each score clamped at 0 as the patched metric does."""
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update

    ims = _as_list(images)
    if len(ims) != len(texts):
        raise ValueError(f"clip_score: {len(ims)} images but {len(texts)} texts")
    out = []
    for i in range(0, len(ims), batch):
        chunk = [torch.from_numpy(np.ascontiguousarray(x.astype(np.uint8))).permute(2, 0, 1).to(device)
                 for x in ims[i:i + batch]]
        s, _ = _clip_score_update(chunk, list(texts[i:i + batch]), model, processor)
        out.append(s.float().clamp(min=0).cpu().reshape(-1))
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


# ---------------------------------------------------------------- zero-shot judge

@register("clip")
class ClipJudge(Judge):
    """Zero-shot concept presence with a transformers CLIP (spec clip:PATH_OR_ID)."""
    name = "clip"
    open_vocabulary = True
    template = TEMPLATE

    def __init__(self, spec: str, device: str | None = None):
        super().__init__(spec)
        ref = spec.split(":", 1)[1].strip() if ":" in spec else ""
        if not ref:
            raise UserError(f"judge {self.name!r} needs a model: {self.name}:/path/to/clip (a local CLIP folder) or "
                            f"{self.name}:ORG/NAME (a hub id already in the local cache); igmu evaluate --clip "
                            "clip:PATH supplies it to a task that names the bare judge")
        self.clip = ClipModel(ref, device=device)
        self.card = {"name": "clip", "what": "zero-shot concept presence with a CLIP model: the concept's caption "
                     f"{self.template.format('C')!r} is the most similar among the task's concepts",
                     "model": str(self.clip.folder), "weights_sha256": self.clip.weights_sha256,
                     "template": self.template, "version": "1",
                     "threshold": "argmax among the concept and the task's other concepts (at least 2)",
                     "concepts": "any text", "validated": None,
                     "validation": "zero-shot: not validated here; train a head (clip-head) for a measured accuracy"}

    def raw(self, images) -> list:
        e = F.normalize(self.clip.image_embeds(images), dim=-1).numpy().round(5)
        return [row.tolist() for row in e]

    def present(self, raw: list, concept: str, context: list[str]) -> list[bool]:
        cands = [concept] + [c for c in dict.fromkeys(context) if c != concept]
        if len(cands) < 2:
            raise UserError(f"the {self.spec!r} judge needs at least two concepts to choose between; add concepts "
                            "to the task (targets, anchor, preserve) or use a judge with fixed classes")
        te = self.clip.text_embeds([self.template.format(c) for c in cands]).numpy()
        if not len(raw):
            return []
        return [bool(v) for v in (np.asarray(raw, dtype=np.float32) @ te.T).argmax(1) == 0]

    def clip_score(self, images, texts: list[str]) -> np.ndarray:
        """CLIP score per (image, text) pair (torchmetrics, see clip_score_tm)."""
        return self.clip.clip_score(images, texts)

    def image_features(self, images, normalize: bool = False) -> np.ndarray:
        """Projected CLIP image embeddings, float32 N x D (unnormalised by default, as clean-fid's CLIP features)."""
        e = self.clip.image_embeds(images)
        return (F.normalize(e, dim=-1) if normalize else e).numpy().astype(np.float32)


PERSON_ALTERNATIVES = ("an empty landscape", "an empty room", "a building", "an animal", "an object on a table",
                       "a plate of food")


@register("clip-person")
class ClipPersonJudge(ClipJudge):
    """Person presence for carrier preservation on real images (spec clip-person:PATH): CLIP zero-shot, "a photo
    of a person" against fixed person-free scenes. IGMU counts persons with YOLOv8n (conf 0.5, benchmark.py
    evaluate_YOLO); its weights are a pickle and ultralytics needs torchvision, so igmu offers this instead."""
    name = "clip-person"
    open_vocabulary = False
    SYNONYMS = ("person", "a person", "people", "human", "a human")

    def __init__(self, spec: str, device: str | None = None):
        super().__init__(spec, device)
        self.card.update({"name": "clip-person", "concepts": ["person"],
                          "what": "person presence: CLIP zero-shot, 'a photo of a person' against "
                                  + ", ".join(repr(a) for a in PERSON_ALTERNATIVES),
                          "threshold": "argmax among 'a person' and the alternatives",
                          "validation": "zero-shot: not validated here; IGMU itself uses YOLOv8n at conf 0.5"})

    def canonical(self, concept: str) -> str | None:
        return "person" if concept.strip().lower() in self.SYNONYMS else None

    def present(self, raw: list, concept: str, context: list[str]) -> list[bool]:
        if self.canonical(concept) is None:
            self.check_concepts([concept])
        return super().present(raw, "a person", list(PERSON_ALTERNATIVES))


# ---------------------------------------------------------------- trained linear head (IGMU-style)

class _Features:
    """The image tower a head sits on: a feature network of the registry ('mini-clip' from the mini world's
    plug-in, or 'clip:PATH'); a head's features are the L2-normalised embeddings."""

    def __init__(self, clip: str):
        from .registry import get

        from .registry import entries

        clip = (clip or "").strip()
        towers = [e.name for e in entries("features") if e.name not in ("clip", "inception")]
        if (not clip or clip == "inception" or (clip.startswith("clip:") and not clip[5:].strip())
                or (not clip.startswith("clip:") and clip not in towers)):
            raise UserError(f"unknown clip {clip!r} for a judge head; use 'clip:PATH' (a local CLIP folder) or a "
                            f"plug-in's CLIP ({', '.join(towers) or 'none installed'})")
        if clip.startswith("clip:"):
            ref = clip[5:].strip()
            self.net = get("features", clip)
            folder = self.net.clip.folder
            self.spec = "clip:" + (str(folder) if Path(ref).expanduser().is_dir() else ref)
        else:
            self.net = get("features", clip)
            self.spec = clip
        self.weights_sha256 = self.net.weights_sha256

    def __call__(self, images) -> torch.Tensor:
        ims = _as_list(images)
        if not ims:
            return torch.zeros(0, self.net.num_features)
        out = torch.zeros(len(ims), self.net.num_features)
        by_size: dict[tuple, list[int]] = {}
        for i, x in enumerate(ims):  # images of one size go through the network together
            by_size.setdefault(x.shape, []).append(i)
        for idx in by_size.values():
            batch = torch.from_numpy(np.stack([ims[i] for i in idx]).astype(np.uint8)).permute(0, 3, 1, 2)
            out[idx] = self.net(batch).float()
        return F.normalize(out, dim=-1)


@register("clip-head")
class ClipHeadJudge(Judge):
    """A CLIP image tower plus a linear head trained by `train_head` (spec clip-head:DIR)."""
    name = "clip-head"

    def __init__(self, spec: str):
        super().__init__(spec)
        from safetensors.torch import load_file

        ref = spec.split(":", 1)[1].strip() if ":" in spec else ""
        if not ref:
            raise UserError("judge 'clip-head' needs a folder: clip-head:DIR (written by `igmu judge train`)")
        d = Path(ref).expanduser()
        if not (d / "card.json").is_file() or not (d / "head.safetensors").is_file():
            raise UserError(f"no judge head at {d} (expected card.json and head.safetensors from `igmu judge train`)")
        from ..utils.validate import load_json

        card = load_json(d / "card.json", "judge card")
        if not (isinstance(card, dict) and isinstance(card.get("classes"), list) and card["classes"]
                and all(isinstance(c, str) for c in card["classes"]) and isinstance(card.get("clip"), str)):
            raise UserError(f"judge card {d / 'card.json'} is damaged: it needs 'classes' (a list of names) and "
                            "'clip' (retrain it: igmu judge train)")
        self.classes = list(card["classes"])
        self.feats = _Features(card["clip"])
        if card.get("clip_weights_sha256") not in (None, self.feats.weights_sha256):
            raise UserError(f"the CLIP model {card['clip']} changed since the head at {d} was trained "
                            f"(weights {self.feats.weights_sha256} != {card['clip_weights_sha256']}); retrain the head")
        w = load_file(str(d / "head.safetensors"))
        self.W, self.b, self.mu, self.sd = w["weight"], w["bias"], w["mean"], w["std"]
        self.card = dict(card)
        self.card.update({"name": "clip-head", "folder": str(d.resolve()), "concepts": self.classes,
                          "head_sha256": _file_hash(d / "head.safetensors")})

    def canonical(self, concept: str) -> str | None:
        c = concept.strip().lower()
        for v in (c, c.replace(" ", "_"), c.replace("_", " "), c.replace(" ", "")):  # Van Gogh -> vangogh
            if v in self.classes:
                return v
        return None

    def raw(self, images) -> list:
        f = self.feats(images)
        with torch.no_grad():
            p = torch.softmax(((f - self.mu) / self.sd) @ self.W.T + self.b, dim=1)
        return [row.tolist() for row in p.numpy().round(5)]

    def present(self, raw: list, concept: str, context: list[str] | None = None) -> list[bool]:
        c = self.canonical(concept)
        if c is None:
            self.check_concepts([concept])
        k = self.classes.index(c)
        return [int(np.argmax(r)) == k for r in raw]


LAYOUTS = ("expected DIR/<class>/*.png|jpg, or IGMU's Training_images_demo/<Concept> with "
           "train/<class>/ and test/<class>/")


def _classes(d: Path, need: int, what: str) -> dict[str, list[Path]]:
    classes: dict[str, list[Path]] = {}
    for sub in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = sub.name.strip().lower()
        if name in classes:
            raise UserError(f"class folders in {d} differ only in case ({sub.name!r}); rename one")
        classes[name] = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not any(classes.values()):
        raise UserError(f"image folder {d} has no class folders with images; {LAYOUTS}")
    if len(classes) < 2:
        raise UserError(f"image folder {d} has 1 class ({next(iter(classes))!r}); a judge head needs at least 2 "
                        f"classes ({LAYOUTS})")
    for c, files in classes.items():
        if len(files) < need:
            raise UserError(f"class {c!r} in {d} has {len(files)} image(s); each class needs at least {need} {what}")
    return classes


def _scan(images_dir) -> tuple[dict[str, list[Path]], dict[str, list[Path]] | None]:
    """(class -> files, class -> test files or None). With DIR/train and DIR/test (IGMU's Training_images_demo/
    <Concept> layout) the test split is the layout's; otherwise DIR/<class>/ and the split is drawn here."""
    d = Path(images_dir).expanduser()
    if not d.is_dir():
        raise UserError(f"image folder {d} does not exist; {LAYOUTS}")
    subs = {p.name.lower(): p for p in d.iterdir() if p.is_dir()}
    if "train" in subs or "test" in subs:
        if not ("train" in subs and "test" in subs):
            have = "train" if "train" in subs else "test"
            raise UserError(f"{d} has a {have}/ folder but no {'test' if have == 'train' else 'train'}/ folder; the "
                            "split layout needs both (train/<class>/ and test/<class>/)")
        train = _classes(subs["train"], 1, "in train/")
        test = _classes(subs["test"], 1, "in test/")
        if set(train) != set(test):
            raise UserError(f"{d}: train/ has classes {sorted(train)} but test/ has {sorted(test)}; they must match")
        return train, {c: test[c] for c in train}
    concepts = sorted(p.name for p in subs.values() if (p / "train").is_dir() and (p / "test").is_dir())
    if concepts:
        raise UserError(f"{d} holds several concepts ({', '.join(concepts)}); pass one: --images {d / concepts[0]}")
    return _classes(d, 2, "(one to train on, one held out)"), None


def _read(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if size is not None and im.size != size:
                raise UserError(f"image {path} is {im.size[0]}x{im.size[1]}; this image tower needs "
                                f"{size[0]}x{size[1]} RGB images (use clip='clip:PATH' for other sizes)")
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot read image {path} ({_first_line(e)}); "
                        "remove it or replace it with a PNG/JPEG") from None


def _split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified: per class, round(val_fraction * n) held out (at least 1, and at least 1 left to train on)."""
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        idx = idx[rng.permutation(len(idx))]
        nv = min(max(1, int(round(val_fraction * len(idx)))), len(idx) - 1)
        va += idx[:nv].tolist()
        tr += idx[nv:].tolist()
    return np.array(sorted(tr)), np.array(sorted(va))


def train_head(images_dir, out, clip: str | None = None, val_fraction: float = 0.2, epochs: int = 300,
               lr: float = 0.05, weight_decay: float = 1e-3, seed: int = 0, log=None) -> Path:
    """Train a linear (multinomial logistic regression) head on CLIP image embeddings and measure it on held-out
    images: the test split of IGMU's Training_images_demo/<Concept>/{train,test}/<class>/ layout, or a stratified
    split of DIR/<class>/*.png|jpg. Written atomically to `out` (a clip-head:DIR folder)."""
    from safetensors.torch import save_file

    from ..utils.io import atomic_dir

    if not clip:
        raise UserError("a judge head needs an image tower: --clip clip:PATH (a local CLIP folder) or a plug-in's "
                        "CLIP (mini-clip for the mini world's 32x32 images)")
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must be between 0 and 1 (got {val_fraction})")
    if epochs < 1:
        raise UserError(f"epochs must be at least 1 (got {epochs})")
    files, test_files = _scan(images_dir)
    classes = list(files)
    feats = _Features(clip)
    size = getattr(feats.net, "input_size", None)
    paths = [p for c in classes for p in files[c]]
    y = np.array([k for k, c in enumerate(classes) for _ in files[c]])
    if test_files is None:
        tr, va = _split(y, val_fraction, seed)
        validation = f"top-1 accuracy on a stratified held-out split (val_fraction={val_fraction}, seed={seed})"
    else:
        tr = np.arange(len(paths))
        paths += [p for c in classes for p in test_files[c]]
        y = np.concatenate([y, [k for k, c in enumerate(classes) for _ in test_files[c]]]).astype(int)
        va = np.arange(len(tr), len(paths))
        validation = "top-1 accuracy on the layout's test/ split"
    imgs = [_read(p, size) for p in paths]
    torch.manual_seed(seed)
    x = feats(imgs).float()
    mu, sd = x[tr].mean(0), x[tr].std(0, unbiased=False).clamp(min=1e-6)
    z = (x - mu) / sd
    yt = torch.from_numpy(y).long()
    g = torch.Generator().manual_seed(seed)
    W = (0.01 * torch.randn(len(classes), z.shape[1], generator=g)).requires_grad_(True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=lr)
    ztr, ytr = z[tr], yt[tr]
    for ep in range(epochs):  # full batch, deterministic
        opt.zero_grad()
        loss = F.cross_entropy(ztr @ W.T + b, ytr) + weight_decay * (W ** 2).sum()
        loss.backward()
        opt.step()
        if log and (ep + 1) % 100 == 0:
            log(f"head epoch {ep + 1}/{epochs} loss {loss.item():.4f}")
    with torch.no_grad():
        pred = (z @ W.T + b).argmax(1).numpy()
    acc = float(np.mean(pred[va] == y[va]))
    train_acc = float(np.mean(pred[tr] == y[tr]))
    per_class = {c: float(np.mean(pred[va][y[va] == k] == k)) for k, c in enumerate(classes)}
    card = {"name": "clip-head", "version": HEAD_VERSION,
            "what": f"linear head on {feats.spec} image embeddings; classes: {', '.join(classes)}",
            "clip": feats.spec, "clip_weights_sha256": feats.weights_sha256, "classes": classes,
            "threshold": "argmax over the classes", "concepts": classes,
            "validated": acc, "accuracy": acc, "n": int(len(va)), "n_train": int(len(tr)),
            "train_accuracy": train_acc, "per_class_accuracy": per_class,
            "images_per_class": {c: int((y[tr] == k).sum() + (y[va] == k).sum()) for k, c in enumerate(classes)},
            "split": "layout" if test_files is not None else "drawn",
            "validation": f"{validation}: {len(va)} images",
            "train": {"epochs": epochs, "lr": lr, "weight_decay": weight_decay, "seed": seed,
                      "optimizer": "Adam, full batch", "features": "L2-normalised CLIP image embedding, standardised"},
            "images_dir": str(Path(images_dir).expanduser().resolve())}
    with atomic_dir(out) as tmp:
        save_file({"weight": W.detach().contiguous(), "bias": b.detach().contiguous(),
                   "mean": mu.contiguous(), "std": sd.contiguous()}, str(tmp / "head.safetensors"))
        (tmp / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    return Path(out)
