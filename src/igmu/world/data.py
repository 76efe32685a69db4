"""DataIGM-mini: labeled renders with captions, splits, and forget/retain prompt sets per task.

Layout written by `build_data(out, seed, n_train, n_test)`:

    out/train/metadata.jsonl      one JSON line per image: file_name, caption, captions, scene, labels
    out/train/images/000000.png   32x32 RGB renders
    out/test/...                  same for the test split
    out/prompts/<task>_forget.json and <task>_retain.json, DataIGM form {task: {group: [prompt, ...]}}
    out/info.json                 seed, sizes, library version

`metadata.jsonl` beside the images is the Hugging Face `imagefolder` convention,
so `datasets.load_dataset("imagefolder", data_dir=out)` reads it too.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..utils.io import atomic_dir
from .captions import caption, canonical
from .render import render
from .scenes import labels, sample_scene

SPLIT_SEED_OFFSET = {"train": 0, "test": 1_000_003}


def iter_split(seed: int, split: str, n: int):
    rng = np.random.default_rng(seed + SPLIT_SEED_OFFSET[split])
    for i in range(n):
        scene = sample_scene(rng)
        caps = [caption(scene, rng) for _ in range(3)]
        yield i, scene, caps


def build_data(out: Path, seed: int = 0, n_train: int = 40000, n_test: int = 4000, progress=None) -> Path:
    from .. import __version__
    from .prompts import all_task_prompts

    out = Path(out)
    with atomic_dir(out) as tmp:
        for split, n in (("train", n_train), ("test", n_test)):
            (tmp / split / "images").mkdir(parents=True)
            with open(tmp / split / "metadata.jsonl", "w") as f:
                for i, scene, caps in iter_split(seed, split, n):
                    name = f"images/{i:06d}.png"
                    Image.fromarray(render(scene)).save(tmp / split / name)
                    rec = {"file_name": name, "caption": canonical(scene), "captions": caps,
                           "scene": scene.to_dict(), "labels": labels(scene)}
                    f.write(json.dumps(rec) + "\n")
                    if progress:
                        progress()
        (tmp / "prompts").mkdir()
        for task, sets in all_task_prompts().items():
            for which in ("forget", "retain"):
                (tmp / "prompts" / f"{task}_{which}.json").write_text(json.dumps({task: sets[which]}, indent=1))
        (tmp / "info.json").write_text(json.dumps({"seed": seed, "n_train": n_train, "n_test": n_test,
                                                   "igmu": __version__, "size": 32}, indent=1))
    return out


def load_split(data_dir: Path, split: str, limit: int | None = None):
    """Returns (uint8 images N x 32 x 32 x 3, list of metadata records)."""
    from ..errors import UserError

    meta = Path(data_dir) / split / "metadata.jsonl"
    if not meta.is_file():
        raise UserError(f"{data_dir} is not a DataIGM-mini folder (no {split}/metadata.jsonl); "
                        f"build one with: igmu world build-data --out {data_dir}")
    recs = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
    if limit:
        recs = recs[:limit]
    imgs = np.stack([np.asarray(Image.open(Path(data_dir) / split / r["file_name"]).convert("RGB")) for r in recs])
    return imgs, recs
