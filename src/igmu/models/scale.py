"""Stable-Diffusion-sized pipelines with random weights, built offline from configs kept in the repo.

    build_scale_pipeline("sd15")   # SD 1.5's UNet (859.5M parameters), CLIP ViT-L/14 text encoder (123.1M),
                                   # VAE (83.7M), PNDM scheduler, epsilon prediction, 512 px
    build_scale_pipeline("sd21")   # SD 2.1's UNet (865.9M; linear projections, per-block heads, upcast
                                   # attention), OpenCLIP ViT-H/14 text encoder as SD uses it (23 layers,
                                   # 340.4M), VAE, DDIM, v-prediction, 768 px

The configs (models/configs/<kind>.json) are the ones of the public checkpoints' component folders; the
tokenizer is CLIP's real BPE tokenizer (models/clip_tokenizer.py). The weights are random (PyTorch's
default initialisation from a seeded generator): these pipelines measure what methods cost at real scale
(time, memory, parameters changed) and exercise real shapes, multi-token concepts and dtypes; their images
are noise. `igmu build-model sd15 --out DIR --dtype float16` saves one like a distributed checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError

CONFIGS = Path(__file__).resolve().parent / "configs"
KINDS = ("sd15", "sd21")


def scale_config(kind: str) -> dict:
    if kind not in KINDS:
        raise UserError(f"unknown model kind {kind!r}; kinds: {', '.join(KINDS)}")
    return json.loads((CONFIGS / f"{kind}.json").read_text())


def scale_text_encoder(config: dict):
    """The text encoder of a scale config (scale_config(kind)), with random weights from torch's global
    generator."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**{k: v for k, v in config["text_encoder"].items() if k != "architectures"}))


def build_scale_pipeline(kind: str = "sd15", seed: int = 0, dtype: torch.dtype = torch.float32,
                         sample_size: int | None = None):
    """A StableDiffusionPipeline of `kind` with random weights. `sample_size` (latent side) overrides the
    default resolution (e.g. 32 for 256 px timing runs); the architecture and every weight shape stay
    those of the real model."""
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from .clip_tokenizer import clip_tokenizer

    c = scale_config(kind)
    unet_cfg = dict(c["unet"], **({"sample_size": sample_size} if sample_size else {}))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(unet_cfg)
    te = scale_text_encoder(c)
    vae = AutoencoderKL.from_config(c["vae"])
    sched_cls = {"PNDMScheduler": PNDMScheduler, "DDIMScheduler": DDIMScheduler}[c["scheduler"]["_class_name"]]
    sched = sched_cls.from_config(c["scheduler"])
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=clip_tokenizer(c["tokenizer"]["pad_token"]),
                                   unet=unet, scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype) if dtype != torch.float32 else pipe


def save_scale_pipeline(kind: str, out, dtype: torch.dtype = torch.float16, seed: int = 0,
                        sample_size: int | None = None) -> Path:
    """Build and save (safetensors, in `dtype`, written atomically) a pipeline of `kind`."""
    from ..utils.io import atomic_dir

    pipe = build_scale_pipeline(kind, seed, torch.float32, sample_size)
    with atomic_dir(Path(out)) as tmp:
        pipe.to(dtype).save_pretrained(str(tmp), safe_serialization=True)
    return Path(out)
