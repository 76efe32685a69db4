"""Guided sampling, written once: the loop that methods use to draw latents of a concept, partial
trajectories for training latents x_t, and pools of whole trajectories.

Classifier-free guidance (Ho & Salimans 2022):  out = out(x, "") + g (out(x, c) - out(x, ""))  in the
denoiser's own output space (a guidance-distilled FLUX.1 takes g as an input instead: Adapter.guided),
stepped with a fresh copy of the pipeline's own scheduler, its timesteps set as the pipeline sets them.
"""
from __future__ import annotations

import inspect

import torch

from ..errors import UserError
from .arch import adapter_for


def cfg_noise(pipe, model, x, t, cond, uncond, guidance: float) -> torch.Tensor:
    """The guided model output the family samples with (Adapter.guided): classifier-free guidance,
    uncond + g (cond - uncond) in one batched denoiser call."""
    return adapter_for(pipe).guided(model, x, t, cond, uncond, guidance)


@torch.no_grad()
def sample_latents(pipe, model, cond, uncond, steps: int, guidance: float, generator=None, noise=None,
                   stop: int | None = None, on_step=None):
    """Classifier-free-guided sampling with a fresh copy of the pipeline's own scheduler.

    Starts from `noise` if given, else from noise drawn with `generator`; runs the first `stop` of `steps`
    steps (all when None), calling `on_step(k, t, x_in)` before each denoiser call with the scaled model
    input x_in (e.g. to label recorded activations, or to keep the trajectory). `model`: the denoiser
    (None: the pipeline's). Returns (latents, scheduler). The one sampling loop that ESD, SPM, FMN, MACE,
    ConceptPrune and the attacks use to draw latents of a concept.
    """
    a = adapter_for(pipe)
    sched = a.sampling_scheduler()
    if noise is None:
        noise = torch.randn(a.latent_shape(cond.shape[0]), generator=generator)
    a.set_timesteps(sched, steps, tuple(noise.shape[-2:]))
    x = noise.to(cond.device, cond.dtype) * a.init_noise_sigma(sched)
    extra = {"generator": generator} if generator is not None and "generator" in inspect.signature(
        sched.step).parameters else {}
    for k, t in enumerate(sched.timesteps[:stop]):
        x_in = a.scale_model_input(sched, x, t)
        if on_step is not None:
            on_step(k, t, x_in)
        eps = cfg_noise(a, model, x_in, t, cond, uncond, guidance)
        x = sched.step(eps, t, x, **extra).prev_sample
    return x, sched


def sample_until(pipe, model, cond, uncond, steps: int, stop: int, guidance: float, generator) -> tuple:
    """Run the pipeline's sampler for `stop` of `steps` steps from seeded noise.

    Returns (x_t, t): the partially denoised latents (scaled as the denoiser's input) and the timestep they
    sit at. This is how ESD and its descendants draw training latents of the concept.
    """
    x, sched = sample_latents(pipe, model, cond, uncond, steps, guidance, generator, stop=stop)
    t = sched.timesteps[stop]
    return adapter_for(pipe).scale_model_input(sched, x, t), t


@torch.no_grad()
def trajectory_pool(pipe, model, cond: torch.Tensor, uncond: torch.Tensor, steps: int, guidance: float,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Every intermediate latent of one guided sampling run per row of `cond` (the pipeline's own sampler).

    Returns (x, t): x is steps x N x C x h x w, x[k] the model input after k sampler steps (what
    sample_until(..., stop=k) returns for the same noise), and t (steps,) the timestep it sits at."""
    seen = []
    sample_latents(pipe, model, cond, uncond.expand(len(cond), -1, -1), steps, guidance, generator,
                   on_step=lambda _k, t, x_in: seen.append((x_in.detach().clone(), t)))
    x = torch.stack([s[0] for s in seen])
    t = torch.stack([torch.as_tensor(s[1]).reshape(()) for s in seen])
    return x, t


@torch.no_grad()
def concept_latents(pipe, model, prompts: list[str], n: int, steps: int, guidance: float, seed: int,
                    batch: int = 32) -> tuple[torch.Tensor, list[int]]:
    """Clean latents x0 of n samples per prompt drawn with `model` (the frozen original denoiser): the
    "images of the concept" that fine-tuning methods and attacks train on. Returns (latents N x C x h x w,
    prompt index of each)."""
    a = adapter_for(pipe)
    which = [i for i, _ in enumerate(prompts) for _ in range(n)]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for s in range(0, len(which), batch):
        idx = which[s:s + batch]
        embs, _ = a.encode([prompts[i] for i in idx] + [""])
        cond, null = embs[:-1], embs[-1:].expand(len(idx), -1, -1)
        x, _ = sample_latents(a, model, cond, null, steps, guidance, gen)
        out.append(x)
    return torch.cat(out), which


@torch.no_grad()
def pipeline_images(pipe, prompts: list[str], negative_prompts: list[str] | None, latents: torch.Tensor,
                    steps: int, guidance: float, height: int, width: int, conditioning_at=None, **extra):
    """The plain pipeline call from given initial latents (N x C x h x w): float N x H x W x 3 in [0, 1] (what
    generation does without an inference-time method, and what such a method's hook falls back to).

    conditioning_at(step) -> N x L x D, if given, is the prompts' conditioning the denoiser reads at each
    sampler step (SAFREE and SEOT switch between an edited and the plain encoding during sampling); the
    negative prompts are encoded as usual. It goes through the pipeline's own loop (callback_on_step_end
    replaces the prompt embeddings before the next step), so everything else is the plain call's. SD 1.x/2.x
    pipelines only (their conditioning is the prompt embeddings alone)."""
    a = adapter_for(pipe)
    if conditioning_at is None:
        return a.pipeline_images(prompts, negative_prompts, latents, steps, guidance, height, width, **extra)
    if a.family != "sd":
        raise UserError(f"switching the prompt conditioning while sampling is implemented for Stable Diffusion "
                        f"1.x/2.x pipelines only, not {a.label}")
    negative = a.encode(negative_prompts or [""] * len(prompts))[0]

    def next_conditioning(_pipe, i, _t, kwargs):
        cond = conditioning_at(i + 1).to(kwargs["prompt_embeds"].device, kwargs["prompt_embeds"].dtype)
        if _pipe.do_classifier_free_guidance:
            return {"prompt_embeds": torch.cat([kwargs["negative_prompt_embeds"], cond])}
        return {"prompt_embeds": cond}
    return pipe(prompt_embeds=conditioning_at(0), negative_prompt_embeds=negative, latents=a.pipeline_latents(latents),
                num_inference_steps=steps, guidance_scale=guidance, height=height, width=width, output_type="np",
                callback_on_step_end=next_conditioning,
                callback_on_step_end_tensor_inputs=["prompt_embeds", "negative_prompt_embeds"], **extra).images
