"""Seeded, batched image generation from any Stable-Diffusion-style pipeline.

Image j of prompt i starts from noise drawn with its own generator seeded
`seed + j`: its initial noise does not depend on the batch. The image itself
is a function of (prompt, seed, model, settings, UNet batch size): batched CPU
kernels sum in an order that depends on the batch size, so the same prompt and
seed at `--batch-size 1` and at a larger batch can differ by float rounding (a
pixel value off by one; scripts/batch_identity.py, figures in docs/hardening.md).
With the same batch size, torch build, thread count and hardware, an image is
bitwise reproducible on CPU, whatever the other prompts in its batch. The
batch size an image was made in is recorded with it (`batch_size` in
generations.jsonl; the last batch of a run may be smaller), and the evaluation
cache keys images on it.

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

from .errors import NonFiniteError, UserError

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 5.0
DEFAULT_BATCH = 64
# Documented bounds of the generation options (the CLI help shows them; validated in GenSettings.validate and
# run_generate): more steps than a scheduler's 1,000 training steps are meaningless; guidance scales in use are
# 1-20 (SD's default 7.5), and far larger ones overflow the latents; images per prompt and batch size bound memory.
MAX_STEPS = 1000
MAX_GUIDANCE = 100.0
MAX_BATCH = 4096
MAX_IMAGES_PER_PROMPT = 10_000
MAX_PROMPT_CHARS = 10_000


@dataclass
class GenSettings:
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None

    def validate(self):
        from .utils.validate import check_float, check_int

        check_int(self.steps, "--steps", 1, MAX_STEPS)
        check_float(self.guidance, "--guidance", 0.0, MAX_GUIDANCE)
        for name, v in (("--height", self.height), ("--width", self.width)):
            if v is not None:
                check_int(v, name, 8, 4096)
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise UserError("--negative-prompt must be text")


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
    bad: list = []  # the VAE decoder saw non-finite latents (the plain pipeline clamps +-inf to white or black)
    decoder = getattr(pipe.vae, "decoder", None)
    watch = decoder.register_forward_pre_hook(
        lambda _m, args: bad.append(1) if not bool(torch.isfinite(args[0]).all()) else None) if decoder else None
    i, b = 0, batch_size
    try:
        while i < len(prompts):
            ps, ss = prompts[i:i + b], seeds[i:i + b]
            lat = torch.cat([initial_noise(pipe, s, h, w) for s in ss]).to(dev, dtype)
            neg = [settings.negative_prompt] * len(ps) if settings.negative_prompt else None
            try:
                images = np.asarray(sample(pipe, ps, neg, lat, settings.steps, settings.guidance, h, w))
            except (RuntimeError, MemoryError) as e:
                ue = hardware_error(e, "generation")
                if not fit or b == 1 or ue is None or not str(ue).startswith("out of memory"):
                    raise
                del lat
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                b = min(b, len(ps)) // 2
                continue
            if bad or not np.isfinite(images).all():
                raise NonFiniteError(f"generation produced non-finite latents (NaN or infinite) for prompt "
                                     f"{ps[0][:60]!r} (seed {ss[0]}); no image was written. The model's weights, "
                                     f"its dtype or the settings (--guidance {settings.guidance:g}) may be the cause")
            out.append((images * 255).round().clip(0, 255).astype(np.uint8))
            sizes += [len(ps)] * len(ps)
            i += len(ps)
            if progress:
                progress(len(ps))
    finally:
        if watch is not None:
            watch.remove()
    return (np.concatenate(out) if out else np.zeros((0, h, w, 3), np.uint8)), sizes


def read_prompt_file(path: str) -> list[str]:
    """Prompts from a UTF-8 text file (one a line; # comments) or DataIGM JSON ({task: {group: [prompt]}})."""
    from .utils.validate import parse_json, read_text

    text = read_text(path, "prompt file")
    if Path(path).suffix == ".json":
        prompts = _flatten(parse_json(text, f"prompt file {path}"))
    else:
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise UserError(f"prompt file {path} has no prompts (one per line, or DataIGM JSON)")
    return prompts


def _flatten(data) -> list[str]:
    """Every non-empty string in nested lists and dicts (values), in order; iterative (depth is bounded on load)."""
    out, stack = [], [data]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            if x.strip():
                out.append(x)
        elif isinstance(x, (list, dict)):
            stack.extend(reversed(list(x.values()) if isinstance(x, dict) else x))
    return out


def run_generate(model: str, prompts: list[str], n: int, seed: int, settings: GenSettings, out: Path,
                 batch_size: int | None = None, progress_factory=None, runtime=None, force: bool = False) -> Path:
    """Generate n images per prompt into out/ (PNGs + generations.jsonl), atomically. batch_size None:
    chosen to fit (auto_batch, halved on out-of-memory); each record says the batch its image was made in."""
    from PIL import Image

    from .artifacts import load_model
    from .utils.device import Runtime, dtype_name, hardware_errors
    from .utils.io import atomic_dir, check_out
    from .utils.validate import check_int, check_seed

    check_int(n, "-n", 1, MAX_IMAGES_PER_PROMPT)
    if batch_size is not None:
        check_int(batch_size, "--batch-size", 1, MAX_BATCH)
    check_seed(seed, "--seed", n)
    runtime = runtime or Runtime()
    prompts = [p.strip() for p in prompts]
    if not prompts or any(not p for p in prompts):
        raise UserError("empty prompt; give a non-empty --prompt or a --prompts file")
    long = next((i for i, p in enumerate(prompts) if len(p) > MAX_PROMPT_CHARS), None)
    if long is not None:  # text encoders read 77 tokens; a megabyte of prompt only costs tokenizer time
        raise UserError(f"prompt {long + 1} is {len(prompts[long]):,} characters long; at most {MAX_PROMPT_CHARS:,}")
    settings.validate()
    out = check_out(out, lambda o: (o / "generations.jsonl").is_file(), "igmu generation folder")
    with hardware_errors("igmu generate"):
        pipe = load_model(model, runtime.device, runtime.dtype, force=force)
        h, w = _size(pipe, settings)
        pairs = [(i, p, j) for i, p in enumerate(prompts) for j in range(n)]
        progress = progress_factory(len(pairs)) if progress_factory else None
        imgs, sizes = _generate(pipe, [p for _, p, _ in pairs], [seed + j for _, _, j in pairs], settings,
                                batch_size or auto_batch(pipe, settings), progress, fit=batch_size is None)
    where = {} if (runtime.device.type, runtime.dtype) == ("cpu", torch.float32) else {
        "device": str(runtime.device), "dtype": dtype_name(runtime.dtype)}
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        with open(tmp / "generations.jsonl", "w", encoding="utf-8") as f:
            for (i, p, j), img, b in zip(pairs, imgs, sizes):
                name = f"images/{i:04d}_{j:03d}.png"
                Image.fromarray(img).save(tmp / name)
                rec = {"prompt": p, "prompt_index": i, "seed": seed + j, "model": model, "file": name,
                       "height": h, "width": w, **{k: v for k, v in asdict(settings).items() if k not in ("height", "width")},
                       "batch_size": b, **where}
                f.write(json.dumps(rec, allow_nan=False) + "\n")
    return out
