"""The forward (noising) process, the training targets and the denoising loss, written once.

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps                     (noised; Ho et al. 2020)
    target = eps (epsilon models) or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (v-prediction)
    L = E_{t, eps} || model(x_t, t, c) - target ||^2                   (diffusion_loss)

and for flow-matching models (SD3, FLUX; schedules.py):

    x_t = (1 - sigma_t) x_0 + sigma_t eps,  sigma_t = t / T,   target = v = eps - x_0

The schedule is the pipeline's training schedule (`Adapter.train_scheduler`: a DDPMScheduler built from
the pipeline's scheduler config, or schedules.FlowMatchTrainSchedule).
"""
from __future__ import annotations

import torch

from ..errors import UserError
from .arch import adapter_for
from .schedules import FLOW


def noised(sched, x0: torch.Tensor, generator: torch.Generator, t: torch.Tensor | None = None):
    """(x_t, t, eps): t ~ U{0..T-1} per latent (unless given), then eps ~ N(0, I), both drawn from `generator`
    in that order."""
    if t is None:
        t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    t = t.to(x0.device)
    return sched.add_noise(x0, noise, t), t, noise


def diffusion_target(sched, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the denoiser is trained to predict at (x0, noise, t): the noise (epsilon models), v (v-prediction)
    or the flow velocity eps - x0 (flow matching)."""
    kind = getattr(sched.config, "prediction_type", "epsilon")
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return sched.get_velocity(x0, noise, t)
    if kind == FLOW:
        return sched.velocity(x0, noise)
    raise UserError(f"prediction type {kind!r} is not supported (epsilon, v_prediction or flow)")


def predicted_x0(sched, xt: torch.Tensor, out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The clean latent a model output implies (DDPM's pred_original_sample, no clipping):
    epsilon: (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t);  v: sqrt(abar_t) x_t - sqrt(1 - abar_t) v;
    flow: x_t - sigma_t v."""
    if getattr(sched.config, "prediction_type", None) == FLOW:
        return sched.predicted_x0(xt, out, t)
    ab = sched.alphas_cumprod.to(xt.device)[t].to(xt.dtype).view(-1, *([1] * (xt.dim() - 1)))
    kind = getattr(sched.config, "prediction_type", "epsilon")
    if kind == "v_prediction":
        return ab.sqrt() * xt - (1 - ab).sqrt() * out
    if kind != "epsilon":
        raise UserError(f"prediction type {kind!r} is not supported (epsilon, v_prediction or flow)")
    return (xt - (1 - ab).sqrt() * out) / ab.sqrt()


def diffusion_loss(pipe, model, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator,
                   t: torch.Tensor | None = None, reduce: bool = True) -> torch.Tensor:
    """The standard denoising loss  E_{t, eps} || model(x_t, t, c) - target ||^2  (Ho et al. 2020),
    one random t and noise per latent. x0: clean latents (B x C x h x w), cond: B x L x D; `model` the
    denoiser to train (None: the pipeline's). reduce=False gives one loss per latent. The loss that CA,
    SalUn, EraseDiff, SA, ScissorHands train with and that UnlearnDiffAtk attacks with."""
    a = adapter_for(pipe)
    sched = a.train_scheduler
    xt, t, noise = noised(sched, x0, generator, t)
    pred = a.denoise(model, xt, t, cond)
    err = (pred.float() - diffusion_target(sched, x0, noise, t).float()) ** 2
    return err.mean() if reduce else err.flatten(1).mean(1)
