"""Seeded, batched image generation from any Stable-Diffusion-style pipeline.

Image j of prompt i starts from noise drawn with its own generator seeded
`seed + j`, so the same (prompt, seed, model, settings) always gives the same
image, whatever else is in the batch.

A pipeline loaded from an inference-time artifact (artifacts.load_model) carries
that method's sampling hook, `pipe.igmu_sampler`, found through the method
registry; generate_images calls it, from the same initial noise, instead of the
plain pipeline call. This module names no method: e.g. the negative-prompt
baseline's hook adds its targets to the user's --negative-prompt, SLD's adds a
safety-guidance branch.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import UserError

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 5.0
DEFAULT_BATCH = 64


@dataclass
class GenSettings:
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None

    def validate(self):
        if self.steps < 1 or self.steps > 1000:
            raise UserError(f"--steps must be between 1 and 1000, got {self.steps}")
        if self.guidance < 0:
            raise UserError(f"--guidance must be >= 0, got {self.guidance}")


def initial_noise(pipe, seed: int, height: int, width: int) -> torch.Tensor:
    """The initial latent (1 x C x h x w, unpacked) of one image, from its own seeded generator."""
    from .diffusion.arch import adapter_for

    a = adapter_for(pipe)
    g = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn((1, a.in_channels, *a.latent_size(height, width)), generator=g, dtype=torch.float32)


def _size(pipe, s: GenSettings):
    from .diffusion.arch import adapter_for

    h, w = adapter_for(pipe).image_size
    return s.height or h, s.width or w


@torch.no_grad()
def generate_images(pipe, prompts: list[str], seeds: list[int], settings: GenSettings,
                    batch_size: int = DEFAULT_BATCH, progress=None) -> np.ndarray:
    """One image per (prompt, seed) pair, in batches of `batch_size`; returns uint8 N x H x W x 3.

    Honours the pipeline's inference-time change, if any (`pipe.igmu_sampler`, see the module docstring).
    """
    return _generate(pipe, prompts, seeds, settings, batch_size, progress, fit=False)[0]


def auto_batch(pipe, settings: GenSettings) -> int:
    """The default batch for `igmu generate`: 64 images up to 32 x 32 latents (the mini model's 16 x 16
    included), fewer for larger latents (by area: 16 at SD's 64 x 64, 512 px); halved further on
    out-of-memory (see _generate)."""
    h, w = _size(pipe, settings)
    f = pipe.vae_scale_factor
    return max(1, min(DEFAULT_BATCH, DEFAULT_BATCH * 32 * 32 // ((h // f) * (w // f))))


def _generate(pipe, prompts, seeds, settings: GenSettings, batch_size: int, progress, fit: bool):
    """(images, the batch size each image was made in). fit=True: on out-of-memory, halve the batch and
    retry (down to 1), so that the batch is chosen to fit; fit=False: out-of-memory is an error."""
    from .diffusion.sampling import pipeline_images
    from .utils.device import hardware_error

    settings.validate()
    h, w = _size(pipe, settings)
    from .diffusion.arch import adapter_for

    dev = pipe.device
    dtype = adapter_for(pipe).denoiser.dtype
    sample = getattr(pipe, "igmu_sampler", None) or pipeline_images
    out, sizes = [], []
    i, b = 0, batch_size
    while i < len(prompts):
        ps, ss = prompts[i:i + b], seeds[i:i + b]
        lat = torch.cat([initial_noise(pipe, s, h, w) for s in ss]).to(dev, dtype)
        neg = [settings.negative_prompt] * len(ps) if settings.negative_prompt else None
        try:
            images = sample(pipe, ps, neg, lat, settings.steps, settings.guidance, h, w)
        except (RuntimeError, MemoryError) as e:
            ue = hardware_error(e, "generation")
            if not fit or b == 1 or ue is None or not str(ue).startswith("out of memory"):
                raise
            del lat
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            b = min(b, len(ps)) // 2
            continue
        out.append((np.asarray(images) * 255).round().clip(0, 255).astype(np.uint8))
        sizes += [len(ps)] * len(ps)
        i += len(ps)
        if progress:
            progress(len(ps))
    return (np.concatenate(out) if out else np.zeros((0, h, w, 3), np.uint8)), sizes


def read_prompt_file(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"prompt file {path} does not exist")
    text = p.read_text(encoding="utf-8", errors="strict")
    if p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"prompt file {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
        prompts = _flatten(data)
    else:
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise UserError(f"prompt file {path} has no prompts (one per line, or DataIGM JSON)")
    return prompts


def _flatten(data) -> list[str]:
    if isinstance(data, str):
        return [data] if data.strip() else []
    if isinstance(data, list):
        return [p for x in data for p in _flatten(x)]
    if isinstance(data, dict):
        return [p for v in data.values() for p in _flatten(v)]
    return []


def run_generate(model: str, prompts: list[str], n: int, seed: int, settings: GenSettings, out: Path,
                 batch_size: int | None = None, progress_factory=None, runtime=None) -> Path:
    """Generate n images per prompt into out/ (PNGs + generations.jsonl), atomically. batch_size None:
    chosen to fit (auto_batch, halved on out-of-memory); each record says the batch its image was made in."""
    from PIL import Image

    from .artifacts import load_model
    from .utils.device import Runtime, dtype_name, hardware_errors
    from .utils.io import atomic_dir, check_writable_dir

    if n < 1:
        raise UserError(f"-n must be at least 1, got {n}")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    runtime = runtime or Runtime()
    prompts = [p.strip() for p in prompts]
    if not prompts or any(not p for p in prompts):
        raise UserError("empty prompt; give a non-empty --prompt or a --prompts file")
    settings.validate()
    out = Path(out)
    if out.exists() and out.is_dir() and any(out.iterdir()) and not (out / "generations.jsonl").exists():
        raise UserError(f"--out {out} is a non-empty folder that igmu did not write; choose an empty or new folder")
    check_writable_dir(out.parent if not out.exists() else out)
    with hardware_errors("igmu generate"):
        pipe = load_model(model, runtime.device, runtime.dtype)
        h, w = _size(pipe, settings)
        pairs = [(i, p, j) for i, p in enumerate(prompts) for j in range(n)]
        progress = progress_factory(len(pairs)) if progress_factory else None
        imgs, sizes = _generate(pipe, [p for _, p, _ in pairs], [seed + j for _, _, j in pairs], settings,
                                batch_size or auto_batch(pipe, settings), progress, fit=batch_size is None)
    where = {} if (runtime.device.type, runtime.dtype) == ("cpu", torch.float32) else {
        "device": str(runtime.device), "dtype": dtype_name(runtime.dtype)}
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        with open(tmp / "generations.jsonl", "w") as f:
            for (i, p, j), img, b in zip(pairs, imgs, sizes):
                name = f"images/{i:04d}_{j:03d}.png"
                Image.fromarray(img).save(tmp / name)
                rec = {"prompt": p, "prompt_index": i, "seed": seed + j, "model": model, "file": name,
                       "height": h, "width": w, **{k: v for k, v in asdict(settings).items() if k not in ("height", "width")},
                       "batch_size": b, **where}
                f.write(json.dumps(rec) + "\n")
    return out
