"""Judges for the mini world, trained on rendered ground truth.

* `MiniDetector`: a small CNN with one head per target kind (objects present,
  colors present, styles present, identity, carrier present, forbidden mark
  present, background).
* Mini CLIP: a stock transformers `CLIPModel` (ViT image tower, CLIP text
  tower), trained contrastively on renders and random captions (synonyms,
  translations, implicit phrasings), for CLIP-score style metrics.

Both ship under `igmu/world/assets/judges/` as safetensors + JSON (config and card).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.io import atomic_dir
from .vocab import BACKGROUNDS, COLORS, IDENTITIES, SHAPES, STYLES

HEADS = {  # name: (kind, classes)
    "objects": ("multi", SHAPES),
    "colors": ("multi", COLORS),
    "styles": ("multi", STYLES),
    "identity": ("single", ["none"] + IDENTITIES),
    "carrier": ("binary", ["carrier"]),
    "mark": ("binary", ["mark"]),
    "background": ("single", BACKGROUNDS),
}
THRESHOLD = 0.5
JUDGES_DIR = Path(__file__).resolve().parent / "assets" / "judges"


def _block(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.SiLU())


class MiniDetector(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.body = nn.Sequential(_block(3, w, 1), _block(w, w, 1), _block(w, 2 * w, 2), _block(2 * w, 2 * w, 1),
                                  _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 1))
        self.heads = nn.ModuleDict({k: nn.Linear(8 * w, len(c) if kind != "binary" else 1)
                                    for k, (kind, c) in HEADS.items()})
        self.width = width

    def forward(self, x):  # x: N x 3 x 32 x 32 in [-1, 1]
        f = self.body(x)
        f = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)
        return {k: h(f) for k, h in self.heads.items()}


def _update(opt, sched, loss, step, steps, t0, what, log):
    """One optimiser step, and a progress line every 100 steps."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    if (step + 1) % 100 == 0:
        log(f"{what} step {step + 1}/{steps} loss {loss.item():.4f} {time.time() - t0:.0f}s")


def labels_to_targets(labs: list[dict]) -> dict[str, torch.Tensor]:
    out = {}
    for k, (kind, classes) in HEADS.items():
        if kind == "multi":
            out[k] = torch.tensor([[float(c in lab[k]) for c in classes] for lab in labs])
        elif kind == "single":
            out[k] = torch.tensor([classes.index(lab[k]) for lab in labs])
        else:
            out[k] = torch.tensor([[float(lab[k])] for lab in labs])
    return out


def decode(logits: dict[str, torch.Tensor], threshold: float = THRESHOLD) -> list[dict]:
    """Logits -> one label dict per image, in the same form as `scenes.labels`."""
    n = next(iter(logits.values())).shape[0]
    res = [dict() for _ in range(n)]
    for k, (kind, classes) in HEADS.items():
        lg = logits[k]
        if kind == "multi":
            p = torch.sigmoid(lg)
            for i in range(n):
                res[i][k] = [c for c, v in zip(classes, p[i].tolist()) if v > threshold]
                res[i][k + "_p"] = dict(zip(classes, [round(v, 4) for v in p[i].tolist()]))
        elif kind == "single":
            p = torch.softmax(lg, 1)
            for i in range(n):
                res[i][k] = classes[int(p[i].argmax())]
                res[i][k + "_p"] = dict(zip(classes, [round(v, 4) for v in p[i].tolist()]))
        else:
            p = torch.sigmoid(lg[:, 0])
            for i in range(n):
                res[i][k] = bool(p[i] > threshold)
                res[i][k + "_p"] = round(float(p[i]), 4)
    return res


def to_input(imgs: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def head_accuracy(pred: list[dict], truth: list[dict]) -> dict[str, float]:
    """Per head: share of images whose predicted label (set, class or bool) equals the truth exactly."""
    acc = {}
    for k, (kind, _) in HEADS.items():
        if kind == "multi":
            ok = [sorted(p[k]) == sorted(t[k]) for p, t in zip(pred, truth)]
        else:
            ok = [p[k] == t[k] for p, t in zip(pred, truth)]
        acc[k] = float(np.mean(ok))
    return acc


class Detector:
    """Loaded detector judge: `Detector.load().predict(uint8 images)` -> list of label dicts."""

    def __init__(self, net: MiniDetector, card: dict):
        self.net, self.card = net.eval(), card

    @classmethod
    def load(cls, folder: Path = JUDGES_DIR / "detector") -> "Detector":
        from safetensors.torch import load_file

        card = json.loads((Path(folder) / "card.json").read_text())
        net = MiniDetector(card["width"])
        net.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
        return cls(net, card)

    @torch.no_grad()
    def predict(self, imgs: np.ndarray, batch: int = 256) -> list[dict]:
        out = []
        for i in range(0, len(imgs), batch):
            out += decode(self.net(to_input(imgs[i:i + batch])), self.card["threshold"])
        return out


def train_detector(data: Path, out: Path = JUDGES_DIR / "detector", steps: int = 1500, batch: int = 128,
                   lr: float = 2e-3, seed: int = 0, width: int = 32, log=print) -> dict:
    from safetensors.torch import save_file

    from .data import load_split

    torch.manual_seed(seed)
    imgs, recs = load_split(data, "train")
    timgs, trecs = load_split(data, "test")
    x_all, y_all = to_input(imgs), labels_to_targets([r["labels"] for r in recs])
    net = MiniDetector(width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(x_all), (batch,), generator=g)
        x = x_all[idx]
        # mild noise and blur so the judge also reads generated (slightly soft, noisy) images
        if step % 2:
            x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1) * 0.5 + x * 0.5
        x = x + 0.06 * torch.rand(batch, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
        logits = net(x)
        loss = 0.0
        for k, (kind, _) in HEADS.items():
            y = y_all[k][idx]
            loss = loss + (F.cross_entropy(logits[k], y) if kind == "single"
                           else F.binary_cross_entropy_with_logits(logits[k], y))
        _update(opt, sched, loss, step, steps, t0, "detector", log)
    net.eval()
    det = Detector(net, {"threshold": THRESHOLD, "width": width})
    acc = head_accuracy(det.predict(timgs), [r["labels"] for r in trecs])
    card = {
        "name": "mini-detector", "version": "1", "width": width, "threshold": THRESHOLD,
        "detects": {k: {"kind": kind, "classes": c} for k, (kind, c) in HEADS.items()},
        "test_accuracy": acc, "test_images": len(trecs), "train_steps": steps,
        "train_seconds": round(time.time() - t0, 1),
        "accuracy_definition": "exact match per image: the predicted set (multi-label heads) or class equals the truth",
    }
    with atomic_dir(out) as tmp:
        save_file(net.state_dict(), str(tmp / "model.safetensors"))
        (tmp / "card.json").write_text(json.dumps(card, indent=1))
    return card


# ---------------------------------------------------------------- mini CLIP

def make_clip(tokenizer, width: int = 128, vision_layers: int = 4, text_layers: int = 3):
    from transformers import CLIPConfig, CLIPModel

    from .model import MAX_TOKENS

    text = dict(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
                num_hidden_layers=text_layers, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=vision_layers,
                  num_attention_heads=4, image_size=32, patch_size=4, num_channels=3)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=width)
    return CLIPModel(cfg)


class MiniCLIP:
    """Loaded mini CLIP: image/text embeddings and CLIP scores."""

    def __init__(self, model, tokenizer, card):
        self.model, self.tok, self.card = model.eval(), tokenizer, card

    @classmethod
    def load(cls, folder: Path = JUDGES_DIR / "clip") -> "MiniCLIP":
        from transformers import CLIPModel, CLIPTokenizer

        folder = Path(folder)
        return cls(CLIPModel.from_pretrained(str(folder)), CLIPTokenizer.from_pretrained(str(folder)),
                   json.loads((folder / "card.json").read_text()))

    @torch.no_grad()
    def embed_images(self, imgs: np.ndarray, batch: int = 256) -> torch.Tensor:
        out = [self.model.get_image_features(pixel_values=to_input(imgs[i:i + batch]))
               for i in range(0, len(imgs), batch)]
        out = [o.pooler_output if hasattr(o, "pooler_output") else o for o in out]
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: list[str], batch: int = 512) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch):
            ids = self.tok(texts[i:i + batch], padding="max_length", truncation=True,
                           max_length=self.tok.model_max_length, return_tensors="pt")
            o = self.model.get_text_features(input_ids=ids.input_ids, attention_mask=ids.attention_mask)
            out.append(o.pooler_output if hasattr(o, "pooler_output") else o)
        return F.normalize(torch.cat(out), dim=-1)

    def score(self, imgs: np.ndarray, texts: list[str]) -> np.ndarray:
        """CLIP score per (image, text) pair: 100 * max(cos, 0), as in Hessel et al. (2021) with w=1."""
        cos = (self.embed_images(imgs) * self.embed_texts(texts)).sum(-1)
        return (100 * cos.clamp(min=0)).numpy()


def caption_retrieval_accuracy(clip: MiniCLIP, imgs: np.ndarray, captions: list[str]) -> tuple[float, int]:
    """Top-1 accuracy of picking each image's caption among all distinct captions given."""
    cands = sorted(set(captions))
    te = clip.embed_texts(cands)
    ie = clip.embed_images(imgs)
    pick = (ie @ te.T).argmax(1).tolist()
    return float(np.mean([cands[p] == c for p, c in zip(pick, captions)])), len(cands)


def train_clip(data: Path, out: Path = JUDGES_DIR / "clip", steps: int = 3000, batch: int = 512, lr: float = 1e-3,
               seed: int = 0, log=print, device: str = "cpu", width: int = 128, vision_layers: int = 4,
               text_layers: int = 3) -> dict:
    from ..models.tokenizer import load_world_tokenizer
    from .captions import canonical, caption
    from .data import load_split
    from .render import Scene

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tok = load_world_tokenizer()
    imgs, recs = load_split(data, "train")
    timgs, trecs = load_split(data, "test")
    scenes = [Scene.from_dict(r["scene"]) for r in recs]
    from .train import pick_device

    dev = pick_device(device)
    x_all = to_input(imgs)
    model = make_clip(tok, width, vision_layers, text_layers).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(x_all), (batch,), generator=g)
        sc = [scenes[i] for i in idx.tolist()]
        # half the captions canonical: same-content images are positives for each other's captions
        caps = [canonical(s) if rng.random() < 0.5 else caption(s, rng) for s in sc]
        ids = tok(caps, padding="max_length", truncation=True, max_length=tok.model_max_length, return_tensors="pt")
        x = x_all[idx] + 0.04 * torch.randn(x_all[idx].shape, generator=g)
        res = model(input_ids=ids.input_ids.to(dev), attention_mask=ids.attention_mask.to(dev),
                    pixel_values=x.to(dev))
        # targets: all pairs whose canonical captions agree are positives (soft multi-positive InfoNCE)
        _, canon = np.unique([canonical(s) for s in sc], return_inverse=True)
        canon = torch.from_numpy(canon)
        same = (canon[:, None] == canon[None, :]).float().to(dev)
        tgt = same / same.sum(1, keepdim=True)
        li = res.logits_per_image
        loss = (-(tgt * F.log_softmax(li, 1)).sum(1).mean() - (tgt * F.log_softmax(li.T, 1)).sum(1).mean()) / 2
        _update(opt, sched, loss, step, steps, t0, "clip", log)
    train_seconds = round(time.time() - t0, 1)
    model = model.cpu().eval()
    clip = MiniCLIP(model, tok, {})
    acc, ncand = caption_retrieval_accuracy(clip, timgs, [r["caption"] for r in trecs])
    card = {"name": "mini-clip", "version": "2", "caption_top1": acc, "candidates": ncand,
            "test_images": len(trecs), "train_steps": steps, "batch": batch, "lr": lr,
            "train_seconds": train_seconds, "train_device": str(dev),
            "accuracy_definition": "top-1 pick of the image's canonical caption among all distinct canonical "
                                   "captions of the test split",
            "score": "CLIP score = 100 * max(cos(image, text), 0)"}
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        (tmp / "card.json").write_text(json.dumps(card, indent=1))
    return card
