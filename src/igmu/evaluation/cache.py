"""Content-addressed cache of generated images and judge outputs.

An image's key is the sha256 of (model fingerprint, prompt, seed, generation
settings, fixed batch size); a judge output's key is (judge fingerprint, image key). Entries are
written to a temp name and renamed, so an interrupted run never leaves a
half-written entry, and any later run (a new aspect, a new judge, another
task sharing prompts) reuses what exists.

Layout: <root>/images/<k[:2]>/<k>.png, <root>/judges/<judge fp>/<k[:2]>/<k>.json
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import UserError


def default_root() -> Path:
    return Path(os.environ.get("IGMU_CACHE", Path.home() / ".cache" / "igmu"))


def model_fingerprint(spec: str) -> str:
    """sha256 over the model's files; for an artifact, over its tensors and the manifest fields that define
    the model (base model hash, method, config, targets, sampling spec)."""
    from ..artifacts import is_artifact
    from ..models.load import model_hash, resolve_model

    if is_artifact(spec):  # what defines the model, not when or how fast it was made (created, cost)
        manifest = json.loads((Path(spec) / "manifest.json").read_text())
        h = hashlib.sha256(json.dumps({k: manifest.get(k) for k in ("base_model_hash", "method", "config", "targets",
                                                                     "anchor", "preserve", "sampling")},
                                      sort_keys=True).encode())
        with open(Path(spec) / "weights.safetensors", "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    return model_hash(resolve_model(spec))


def image_key(model_fp: str, prompt: str, seed: int, settings, batch: int, precision: str | None = None) -> str:
    """`batch`: the fixed UNet batch the image is generated in. CPU kernels may round differently at
    different batch sizes (a pixel off by one), so the batch size is part of what defines an image;
    at a fixed batch size the result does not depend on the other images in the batch. `precision`:
    "<device type>/<dtype>" when not CPU float32 (other kernels and dtypes give other images); CPU float32
    images keep the keys they always had."""
    key = {"model": model_fp, "prompt": prompt, "seed": int(seed), "settings": asdict(settings), "batch": int(batch)}
    if precision:
        key["precision"] = precision
    s = json.dumps(key, sort_keys=True)
    return hashlib.sha256(s.encode()).hexdigest()


class Cache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else default_root()
        try:
            (self.root / "images").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the cache folder {self.root}: {e.strerror}; set --cache or IGMU_CACHE") from None
        self.hits = {"images": 0, "judge": 0}
        self.misses = {"images": 0, "judge": 0}

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    # --- images --------------------------------------------------------
    def image_path(self, key: str) -> Path:
        return self.root / "images" / key[:2] / f"{key}.png"

    def get_image(self, key: str) -> np.ndarray | None:
        from PIL import Image

        p = self.image_path(key)
        if not p.is_file():
            return None
        try:
            with Image.open(p) as im:
                return np.asarray(im.convert("RGB"))
        except OSError:  # a damaged entry is regenerated
            return None

    def put_image(self, key: str, img: np.ndarray) -> None:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        self._write(self.image_path(key), buf.getvalue())

    # --- judge outputs -------------------------------------------------
    def judge_path(self, judge_fp: str, key: str) -> Path:
        return self.root / "judges" / judge_fp / key[:2] / f"{key}.json"

    def get_judge(self, judge_fp: str, key: str):
        p = self.judge_path(judge_fp, key)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def put_judge(self, judge_fp: str, key: str, raw) -> None:
        self._write(self.judge_path(judge_fp, key), json.dumps(raw).encode())
