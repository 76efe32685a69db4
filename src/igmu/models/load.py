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
        if not idx.is_file():
            raise UserError(f"--model {spec} is not a diffusers pipeline folder (no model_index.json in it)")
        from ..utils.validate import load_json

        if not isinstance(load_json(idx, f"--model {spec}: model_index.json"), dict):
            raise UserError(f"--model {spec}: model_index.json is not a mapping")
        return str(p)
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return spec  # a hub id: tried by from_pretrained, offline-safe error below
    raise UserError(f"unknown model {spec!r}: no such folder; give 'mini', a local diffusers pipeline folder, or a hub id")


def model_hash(where: str) -> str:
    """sha256 over a pipeline folder's configs and weights (a hub id hashes as its name)."""
    p = Path(where)
    if not p.is_dir():
        return "hub:" + where
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".txt", ".bin"):
            h.update(str(f.relative_to(p)).encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def _has_safety_checker(where: str) -> bool:
    """Whether the pipeline takes a safety checker (a local folder says so in model_index.json; a hub id: assume so)."""
    idx = Path(where) / "model_index.json"
    if not idx.is_file():
        return True
    try:
        return "safety_checker" in json.loads(idx.read_text())
    except (OSError, json.JSONDecodeError):
        return True


def load_pipeline(spec: str, device: str = "cpu", dtype=None):
    """A diffusers DiffusionPipeline for text-to-image, with the progress bar off and no safety checker."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    where = resolve_model(spec)
    kwargs = {}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    if _has_safety_checker(where):  # SD 1.x/2.x: no safety checker (SDXL, SD3, FLUX have none to switch off)
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = DiffusionPipeline.from_pretrained(where, local_files_only=os.path.isdir(where), **kwargs)
    except Exception as e:  # a user-facing load: report the cause in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if os.path.isdir(where):
            raise UserError(f"could not load pipeline from {where}: {first}") from None
        raise UserError(f"could not load {spec!r}: not a local folder, and the hub gave: {first}") from None
    if getattr(pipe, "unet", None) is None and getattr(pipe, "transformer", None) is None:
        raise UserError(f"{spec!r} is not a text-to-image diffusion pipeline (it has no unet or transformer)")
    for name in ("text_encoder", "tokenizer", "vae"):
        if getattr(pipe, name, None) is None:
            raise UserError(f"{spec!r} is not a text-to-image diffusion pipeline igmu can drive (it has no {name})")
    pipe.set_progress_bar_config(disable=True)
    if device != "cpu":
        pipe.to(device)
    return pipe
