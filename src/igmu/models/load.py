"""Load any diffusers text-to-image pipeline: the shipped mini model, a local folder, or a hub id.

Plain pipelines only: loading an igmu artifact (a base model plus changed tensors) is artifacts.load_model,
a layer above."""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from ..errors import UserError

MINI_DIR = Path(__file__).resolve().parent.parent / "world" / "assets" / "mini-sd"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(spec: str) -> str:
    """'mini', a local pipeline folder or a hub id -> what from_pretrained should get; UserError otherwise."""
    if not spec or not spec.strip():
        raise UserError("empty --model; give 'mini', a local diffusers pipeline folder, or a hub id")
    if spec == "mini":
        if not (MINI_DIR / "model_index.json").is_file():
            raise UserError(f"the shipped mini model is missing at {MINI_DIR}; rebuild it (see README: Rebuilding)")
        return str(MINI_DIR)
    p = Path(spec).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserError(f"--model {spec} is a file, not a diffusers pipeline folder")
        idx = p / "model_index.json"
        if not idx.is_file() and (p / "manifest.json").is_file():
            raise UserError(f"--model {spec} is an igmu artifact, not a pipeline folder; here it needs a pipeline "
                            f"(merge it first: igmu export {spec} --out MERGED)")
        if not idx.is_file():
            raise UserError(f"--model {spec} is not a diffusers pipeline folder (no model_index.json in it)")
        from ..utils.validate import load_json

        if not isinstance(load_json(idx, f"--model {spec}: model_index.json"), dict):
            raise UserError(f"--model {spec}: model_index.json is not a mapping")
        return str(p)
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return spec  # a hub id: tried by from_pretrained, offline-safe error below
    raise UserError(f"unknown model {spec!r}: no such folder; give 'mini', a local diffusers pipeline folder, or a hub id")


_HASHES: dict = {}  # (folder, its files' names, sizes and mtimes) -> hash, within one process


def model_hash(where: str) -> str:
    """sha256 over a pipeline folder's configs and weights (a hub id hashes as its name). Remembered within a
    process while no file's size or modification time changes (checking an artifact's base hashes it)."""
    p = Path(where)
    if not p.is_dir():
        return "hub:" + where
    files = [f for f in sorted(p.rglob("*")) if f.is_file() and f.suffix in (".json", ".safetensors", ".txt", ".bin")]
    stamp = (str(p.resolve()), tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if stamp in _HASHES:
        return _HASHES[stamp]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    _HASHES[stamp] = h.hexdigest()
    return _HASHES[stamp]


def _has_safety_checker(where: str) -> bool:
    """Whether the pipeline takes a safety checker (a local folder says so in model_index.json; a hub id: assume so)."""
    idx = Path(where) / "model_index.json"
    if not idx.is_file():
        return True
    try:
        return "safety_checker" in json.loads(idx.read_text())
    except (OSError, json.JSONDecodeError):
        return True


def load_pipeline(spec: str, device="cpu", dtype=None):
    """A diffusers DiffusionPipeline for text-to-image, with the progress bar off and no safety checker.

    Every component is loaded in `dtype` (default float32) whatever dtype its weights were saved in (left
    alone, transformers keeps a text encoder saved in float16 in float16 while diffusers loads the UNet in
    float32, and sampling fails on the mix), then moved to `device`. Attention runs through PyTorch's
    scaled_dot_product_attention (diffusers' AttnProcessor2_0 and transformers' "sdpa", both the defaults).
    """
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    where = resolve_model(spec)
    kwargs = {"dtype": torch.float32 if dtype is None else dtype}
    if _has_safety_checker(where):  # SD 1.x/2.x: no safety checker (SDXL, SD3, FLUX have none to switch off)
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = DiffusionPipeline.from_pretrained(where, local_files_only=os.path.isdir(where), **kwargs)
    except Exception as e:  # a user-facing load: report the cause in one line
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        if "weights only" in text.lower() or "weights_only" in text:
            # torch.load(weights_only=True) refused a pickle holding Python objects: never suggest loading it anyway
            first = ("a component's weights are a pickle (.bin/.pt) holding Python objects, which igmu never unpickles "
                     "(unpickling can run code); use a pipeline saved as safetensors")
        if os.path.isdir(where):
            raise UserError(f"could not load pipeline from {where}: {first}") from None
        raise UserError(f"could not load {spec!r}: not a local folder, and the hub gave: {first}") from None
    if getattr(pipe, "unet", None) is None and getattr(pipe, "transformer", None) is None:
        raise UserError(f"{spec!r} is not a text-to-image diffusion pipeline (it has no unet or transformer)")
    for name in ("text_encoder", "tokenizer", "vae"):
        if getattr(pipe, name, None) is None:
            raise UserError(f"{spec!r} is not a text-to-image diffusion pipeline igmu can drive (it has no {name})")
    check_finite_weights(pipe, spec)
    pipe.set_progress_bar_config(disable=True)
    if str(device) != "cpu":
        pipe.to(device)
    return pipe


def check_finite_weights(pipe, spec: str) -> None:
    """Refuse a pipeline with NaN or infinite weights: erasing from it, or generating with it, gives garbage
    (black images) without a word. One pass over every floating parameter and buffer."""
    import torch

    for comp_name, comp in pipe.components.items():
        if not isinstance(comp, torch.nn.Module):
            continue
        for name, t in list(comp.named_parameters()) + list(comp.named_buffers()):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise UserError(f"model {spec!r} has non-finite weights (NaN or infinite) in {comp_name}.{name}; "
                                "it cannot be used: repair or re-download it")
