"""ESD: Erasing Concepts from Diffusion Models (Gandikota, Materzynska, Fiotto-Kaufman, Bau; ICCV 2023).

Fine-tune the UNet so that, on latents of the concept, its conditioned output
follows negative guidance away from the concept (eq. 4 of the paper):

    eps_theta(x_t, c, t)  <-  eps_theta*(x_t, t) - eta [eps_theta*(x_t, c, t) - eps_theta*(x_t, t)]

theta* is the frozen original model. x_t is drawn by sampling the concept with
the frozen model (guidance 3) for a random number of the sampler's steps, as
in the official diffusers implementation (rohitgandikota/erasing, esd_sd.py).
ESD-x fine-tunes the cross-attention layers (attn2), for concepts named in
the prompt such as styles; ESD-u the non-cross-attention layers, for global
concepts such as nudity or objects.

Defaults from the official esd_sd.py: iterations 200, lr 5e-5 (Adam),
guidance_scale 3 for sampling x_t, 50 sampler steps, batch 1. eta is 1.0 as
in the paper and its CompVis code; esd_sd.py writes the target as
eps_c - 2 (eps_c - eps_0), which is the same target as eps_0 - 1 (eps_c - eps_0).
(The CompVis code used 1000 iterations and lr 1e-5, and drew x_t with the
model being trained.) The sampler is the pipeline's own scheduler, as in esd_sd.py.

Other architectures (docs/architectures.md), the same update through the architecture adapter:
- SDXL, after the official esd_sdxl.py: its defaults lr 2e-4 and guidance_scale 2 for sampling x_t (the
  rest as esd_sd.py: 200 iterations, 50 steps, eta 1); the pooled embedding and time ids reach the UNet as
  added_cond_kwargs. Differences: esd_sdxl.py trains at 1024 px; igmu at the model's default size.
- FLUX.1, after esd_flux.py (rohitgandikota/erasing announced it, "FLUX ESD coming soon"; the snapshot of
  the upstream repository available here predates it, so igmu follows the script as kept in forks, e.g.
  milosz7/erasing, and in EraseAnything's derivative): lr 1e-4, 1400 iterations, x_t drawn in 28 steps at
  the distilled guidance 3.5, the three predictions of the target taken at guidance 1, eta 1; ESD-x
  trains every Linear of the joint and single-stream attention ('attn' in the name), ESD-x-strict their
  to_k/to_v. The predictions are flow velocities, and eq. 4 is applied to them as the script does: at a
  fixed x_t a velocity is an affine function of the noise estimate, v = (eps - x_t) / (1 - sigma_t), and
  eq. 4 an affine combination (weights 1 + eta and -eta), so the target is eq. 4's in either unit.
  Differences: esd_flux.py trains at 512 px; igmu at the VAE's native size.
- SD3: no official script; igmu applies esd_sd.py's update and defaults to SD3's classifier-free-guided
  flow velocities, with FLUX's parameter selection (joint attention).

Speed, not the algorithm: theta* never changes, so the x_t of future iterations are
drawn ahead of the updates, `xt_batch` trajectories at a time in one batched denoiser
call per sampler step (diffusion.sampling.PartialTrajectories), and with classifier-free
guidance e_c, e_0 are the two halves of the sampler's guided call at x_t (no further
call). Each iteration keeps its own stop and noise, drawn in the same order as one
trajectory at a time; only the rounding of batched kernels differs (the loss
statistics and the erasure against the unbatched loop: docs/performance.md).
xt_share=m > 1 is an opt-in trade that esd_sd.py does not make: m iterations read
their x_t off one trajectory, each at its own drawn step, so each x_t keeps its
distribution but those m are no longer independent; it samples about 2.5x fewer
denoiser rows at m = 4 (measured in docs/performance.md).
"""
from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ..diffusion.arch import adapter_for
from ..diffusion.sampling import PartialTrajectories
from .base import EraseRequest, Eraser, MethodConfig, register
from .common import check_targets
from .train import Adam, FineTune, module_parameters


class ESDConfig(MethodConfig):
    train_method: Literal["xattn", "noxattn", "full", "xattn-strict"] = "xattn"  # esd-x; esd-u = noxattn
    iterations: int = Field(200, ge=1)  # official esd_sd.py default
    lr: float = Field(5e-5, gt=0)  # official esd_sd.py default (Adam)
    negative_guidance: float = Field(1.0, ge=0)  # eta = 1.0: paper and CompVis code (see module docstring)
    guidance_scale: float = Field(3.0, ge=0)  # sampling x_t, official default
    sample_steps: int = Field(50, ge=2)  # official num_inference_steps default
    xt_batch: int = Field(32, ge=1)  # igmu, speed only: x_t trajectories drawn together (1: one at a time)
    xt_share: int = Field(1, ge=1)  # igmu, opt-in: iterations per x_t trajectory (1: esd_sd.py's, see docstring)
    seed: int = 0


def trajectory_draws(rng: np.random.Generator, iterations: int, steps: int) -> list[tuple[int, int]]:
    """(stop, noise seed) of every iteration's x_t: the sampler step it stops at, U{0..steps-1} (esd_sd.py:
    random.randint(0, num_inference_steps - 1)), and the seed of its initial noise, in the order the
    one-at-a-time loop drew them."""
    return [(int(rng.integers(0, steps)), int(rng.integers(0, 2 ** 31))) for _ in range(iterations)]


def esd_loss(a, base, trained, cond: torch.Tensor, null: torch.Tensor, cfg, rng: np.random.Generator):
    """ESD's compute_loss(step): x_t of the concept drawn by the frozen model `base`, the frozen model's
    conditional and unconditional outputs there, and the MSE of `trained`'s conditional output to eq. 4's
    target. cfg: iterations, sample_steps, guidance_scale, negative_guidance, xt_batch, xt_share. The x_t
    are drawn ahead of the updates (see the module docstring). Shared by esd and esd-lora."""
    draws = trajectory_draws(rng, cfg.iterations, cfg.sample_steps)
    # x_t: the concept sampled by the frozen model for a random number of the sampler's steps
    xts = PartialTrajectories(a, base, cond, null, cfg.sample_steps, [s for s, _ in draws], cfg.guidance_scale,
                              [torch.Generator().manual_seed(g) for _, g in draws], width=cfg.xt_batch,
                              share=cfg.xt_share)

    def compute_loss(step):
        xt, t, e_0, e_c = xts.take(step)  # eps_theta*(x_t, t), eps_theta*(x_t, c, t)
        target = e_0 - cfg.negative_guidance * (e_c - e_0)  # eq. 4
        return F.mse_loss(a.denoise(trained, xt, t, cond), target)
    return compute_loss


@register
class ESD(Eraser):
    name = "esd"
    summary = "fine-tune the denoiser to follow negative guidance away from the concept (ESD-x / ESD-u)"
    changes = ("UNet cross-attention layers (xattn, default) or all other layers (noxattn); on SD3/FLUX the "
               "joint-attention layers")
    source = "Gandikota et al., Erasing Concepts from Diffusion Models, ICCV 2023; rohitgandikota/erasing"
    Config = ESDConfig
    architectures = {"sd": None, "sdxl": None, "sd3": None, "flux": None}
    family_defaults = {
        "sdxl": {"lr": 2e-4, "guidance_scale": 2.0},  # official esd_sdxl.py argparse defaults
        # esd_flux.py (see the module docstring): --lr 1e-4, --iterations 1400, --num_inference_steps 28,
        # --inference_guidance_scale 3.5 for sampling x_t
        "flux": {"lr": 1e-4, "iterations": 1400, "sample_steps": 28, "guidance_scale": 3.5},
    }
    strength = {"lr": "lr"}
    budget = {"iterations": "steps", "sample_steps": "sample_steps"}

    def check(self, pipe, req: EraseRequest, cfg):
        check_targets(pipe, req)

    def erase(self, pipe, req: EraseRequest, cfg: ESDConfig) -> dict:
        a = adapter_for(pipe)
        base = a.denoiser.eval().requires_grad_(False)  # theta*, frozen
        esd = copy.deepcopy(base)  # theta, trained
        params = module_parameters(esd, cfg.train_method)
        esd.requires_grad_(False)
        for _, p in params:
            p.requires_grad_(True)
        embs, _ = a.encode([req.targets[0], ""])
        cond, null = embs[:1], embs[1:]
        rng = np.random.default_rng(cfg.seed)

        loop = FineTune(params, Adam(lr=cfg.lr), checkpoint=[esd])
        loop.run(cfg.iterations, esd_loss(a, base, esd, cond, null, cfg, rng), self.progress(cfg.iterations))
        esd.requires_grad_(False)
        a.set_denoiser(esd)
        return loop.tensors(a.component)
