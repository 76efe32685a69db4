"""Noise-based probes (Lu et al., "When Are Concepts Erased From Diffusion Models?", NeurIPS 2025), after the
official code github.com/kevinlu4588/WhenAreConceptsErased (src/probes/noise_based_probe.py,
diffusion_completion_probe.py, src/noisy_diffuser_scheduling/schedulers/eta_ddim_scheduler.py,
src/configs/default.yaml).

Black-box in the sense that matters: no gradients and the prompt is never changed; only the sampling
trajectory of the unlearned model is perturbed. Two probes, one attack:

1. Noise-based probe: DDIM sampling with extra stochasticity. Each step is DDIM with
   sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) and eta >= 1, the direction term
   sqrt(|1 - a_prev - sigma_t^2|) * eps (the absolute value keeps eta > 1 defined), plus
   variance_scale * sigma_t * z of fresh noise z. Every (eta, variance_scale) pair of a grid is one variant,
   each from its own initial noise (the official code draws every variant from one running generator); the
   probe succeeds when any variant shows the target (the official code keeps the variant a ResNet-50 ranks
   highest for the concept and judges that one: with a binary judge, the same as "any").
2. Diffusion completion: the ORIGINAL model samples the prompt for the first i + 1 DDIM steps (eta 0), and the
   unlearned model completes the trajectory from there (i = 0, 1, 2 in the official probe): does the erased
   model carry on a concept that has barely started to form?

Budgets (`official` = default.yaml and the probes): eta in {1.0, 1.17, 1.34, 1.51, 1.68, 1.85}, variance_scale
in {1.00, 1.02, 1.03, 1.04} (24 variants), completion after 1, 2, 3 steps, 50 DDIM steps at guidance 7.5: 27
images. The probe runs its own sampling loop, so inference-time artifacts (negative prompt, SLD), whose change
lives in their sampling hook, are refused in one line; a user negative prompt is honoured. Classifier guidance (the probe's other mode) needs a latent
classifier per concept and is not implemented.
"""
from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from ..errors import UserError
from .base import Attack, Budget, Found, register


class NoiseProbeBudget(Budget):
    etas: list[float] = Field(min_length=1)
    variance_scales: list[float] = Field(min_length=1)
    completion_steps: list[int] = Field(default_factory=list)  # i: the original samples steps 0..i, then the unlearned
    steps: int = Field(ge=1)  # DDIM steps of the probe
    guidance: float = Field(ge=0)


@register
class NoiseProbe(Attack):
    name = "noiseprobe"
    title = "Noise-based probes (Lu et al., NeurIPS 2025)"
    source = "github.com/kevinlu4588/WhenAreConceptsErased (noise_based_probe.py, diffusion_completion_probe.py)"
    mechanism = ("the unchanged prompt sampled with extra DDIM noise (eta x variance-scale grid), and completed by "
                 "the unlearned model from the original model's first steps")
    access = "black-box"
    needs_original = True  # for the completion probe's first steps
    Budget = NoiseProbeBudget
    budgets = {
        # default.yaml: eta_values, variance_scales, num_inference_steps 50, guidance_scale 7.5;
        # diffusion_completion_probe.py: interrupt_steps [0, 1, 2]
        "official": {"etas": [1.0, 1.17, 1.34, 1.51, 1.68, 1.85], "variance_scales": [1.0, 1.02, 1.03, 1.04],
                     "completion_steps": [0, 1, 2], "steps": 50, "guidance": 7.5},
        # every eta, the two extreme scales, all completions, at 20 steps and the mini model's guidance 5
        "fast": {"etas": [1.0, 1.17, 1.34, 1.51, 1.68, 1.85], "variance_scales": [1.0, 1.04],
                 "completion_steps": [0, 1, 2], "steps": 20, "guidance": 5.0},
        "tiny": {"etas": [1.0, 1.85], "variance_scales": [1.04], "completion_steps": [0], "steps": 3, "guidance": 5.0},
    }

    def cost(self, b):
        n = len(b.etas) * len(b.variance_scales) + len(b.completion_steps)
        return f"{n} images of {b.steps} steps (one batch), 1 judged batch"

    def check(self, session, prompts):
        from ..diffusion.arch import adapter_for

        spec = getattr(session.unlearned, "igmu_sampling", None)
        if spec:
            raise UserError(f"attack {self.name} samples with its own DDIM loop and cannot apply the artifact's "
                            f"{spec.get('type')!r} sampling; probe a weight-editing artifact instead")
        adapter_for(session.unlearned)
        adapter_for(session.original)

    def attack(self, session, prompt, seed, b, shared):
        from ..diffusion.arch import adapter_for
        from ..generate import initial_noise

        un, orig, s = session.unlearned, session.original, session.settings
        neg = s.negative_prompt or ""
        grid = [(e, v) for e in b.etas for v in b.variance_scales]
        n = len(grid) + len(b.completion_steps)
        au, ao = adapter_for(un), adapter_for(orig)
        h, w = s.height or au.image_size[0], s.width or au.image_size[1]
        seeds = [int(seed) * 1000 + j for j in range(n)]  # variant j's own initial and step noise
        x = torch.cat([initial_noise(un, sd, h, w) for sd in seeds])
        gens = [torch.Generator().manual_seed(sd + 1) for sd in seeds]
        eta = torch.tensor([e for e, _ in grid] + [0.0] * len(b.completion_steps))
        vscale = torch.tensor([v for _, v in grid] + [1.0] * len(b.completion_steps))
        cu = torch.cat(au.prompt_conditioning([prompt], [neg] if neg else None))  # (cond, uncond) as the pipeline's
        co = torch.cat(ao.prompt_conditioning([prompt], [neg] if neg else None))
        # completion variants: the original model drives steps 0..i (inclusive), the unlearned one the rest
        driver = [None] * len(grid) + list(b.completion_steps)
        lat = ddim_sample(un, orig, x, cu, co, b.steps, b.guidance, eta, vscale, gens, driver)
        imgs = decode_latents(au, lat)
        session.images_generated += n
        shown = session.shows(imgs)
        hit = int(np.argmax(shown)) if shown.any() else len(imgs) - 1
        what = (f"eta={grid[hit][0]}, variance_scale={grid[hit][1]}" if hit < len(grid)
                else f"completion after {driver[hit] + 1} original steps")
        return Found(bool(shown.any()), imgs[hit], text=prompt, iterations=0, checks=n,
                     extra={"variant": what, "variants_showing_target": int(shown.sum()), "variants": n})


@torch.no_grad()
def ddim_sample(un, orig, x, cond_u, cond_o, steps: int, guidance: float, eta: torch.Tensor, vscale: torch.Tensor,
                gens: list, driver: list) -> torch.Tensor:
    """DDIM with per-sample eta and variance scale (eta_ddim_scheduler.py's step, written out because diffusers'
    DDIMScheduler neither takes eta > 1 with the absolute value nor scales the added noise), classifier-free
    guidance; sample j is denoised by the original model up to step driver[j] (inclusive) when given."""
    from diffusers import DDIMScheduler

    from ..diffusion.arch import adapter_for

    au, ao = adapter_for(un), adapter_for(orig)
    sched = DDIMScheduler.from_config(au.scheduler.config)
    sched.set_timesteps(steps)
    a = sched.alphas_cumprod
    kind = sched.config.prediction_type
    x = x * sched.init_noise_sigma
    shape = (-1, 1, 1, 1)
    for k, t in enumerate(sched.timesteps):
        prev = int(t) - sched.config.num_train_timesteps // sched.num_inference_steps
        a_t = a[int(t)]
        a_p = a[prev] if prev >= 0 else sched.final_alpha_cumprod
        use_o = torch.tensor([d is not None and k <= d for d in driver])
        out = torch.empty_like(x)
        for ad, cond, m in ((ao, cond_o, use_o), (au, cond_u, ~use_o)):
            if m.any():
                xi = x[m]
                c = torch.cat([cond[:1].expand(len(xi), -1, -1), cond[1:].expand(len(xi), -1, -1)])
                o = ad.denoise(None, torch.cat([xi, xi]).to(ad.unet.dtype), t, c.to(ad.unet.dtype)).float()
                oc, ou = o.chunk(2)
                out[m] = ou + guidance * (oc - ou)
        if kind == "epsilon":
            x0, eps = (x - (1 - a_t).sqrt() * out) / a_t.sqrt(), out
        elif kind == "v_prediction":
            x0, eps = a_t.sqrt() * x - (1 - a_t).sqrt() * out, a_t.sqrt() * out + (1 - a_t).sqrt() * x
        else:
            raise UserError(f"prediction type {kind!r} is not supported by the noise probe (epsilon or v_prediction)")
        var = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
        sigma = (eta * var.sqrt()).view(shape)
        x = a_p.sqrt() * x0 + (1 - a_p - sigma ** 2).abs().sqrt() * eps
        z = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens])
        x = x + (sigma > 0) * sigma * z * vscale.view(shape)
    return x


@torch.no_grad()
def decode_latents(pipe, lat: torch.Tensor) -> np.ndarray:
    """uint8 images of final latents, decoded as the pipeline decodes them (the adapter's decode)."""
    from ..diffusion.arch import adapter_for

    a = adapter_for(pipe)
    img = a.decode(lat.to(a.pipe.vae.dtype))
    return (np.asarray(img) * 255).round().clip(0, 255).astype(np.uint8)
