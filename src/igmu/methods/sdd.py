"""SDD: Safe self-Distillation Diffusion ("Towards Safe Self-Distillation of Internet-Scale Text-to-Image
Diffusion Models", Kim et al.; ICML 2023 Workshop on Challenges in Deployable Generative AI,
arXiv 2307.05977). Official code: nannullna/safe-diffusion (train_sdd.py, run_sdd_nudity.sh).

Self-distillation towards the unconditional prediction: the student's noise estimate for the concept is
pulled to its own (detached) unconditional estimate, on latents z_t drawn by an EMA teacher:

    L = || eps_theta(z_t, c_s, t) - sg[eps_theta(z_t, "", t)] ||^2
    theta_EMA <- m theta_EMA + (1 - m) theta                    after every step; the EMA model is the result

c_s: the concept removed at this step (the targets in turn, concept_method "iterative"); z_t: the teacher
samples the prompt c_p = all targets joined by ", " with classifier-free guidance s_g for k ~ U{0..49} of
50 DDIM steps, and t ~ U[round((1 - (k+1)/50) T), round((1 - k/50) T)) is a training timestep inside that
sampler step's interval.

Defaults (official argparse and run_sdd_nudity.sh): 1500 steps, AdamW lr 1e-5 (betas 0.9/0.999, eps 1e-8,
weight decay 1e-4), constant schedule, gradient clipping at 1.0, EMA decay 0.999, guidance 3.0 for z_t,
50 DDIM steps, finetuning_method xattn (every parameter with "attn2" in its name), seed 42.

Differences from the official code, stated exactly:
  * z_t comes from the pipeline's own sampler (official: DDIM); for k = 0 it is the initial noise (the
    official sample_until only stops at step index until-1, so k = 0 runs the whole trajectory).
  * The EMA update covers the trained parameters only (the others are equal in teacher and student;
    official: all parameters, which changes them only by rounding).
  * finetuning_method 'noxattn' is igmu's parameter group of that name (the official one also trains the
    output norm, conv_norm_out); 'selfattn' and 'notime' are not offered.
"""
from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..diffusion.arch import adapter_for
from ..diffusion.sampling import sample_until
from .base import EraseRequest, Eraser, MethodConfig, register
from .common import check_request
from .train import AdamW, FineTune, freeze_except, parameter_group


class SDDConfig(MethodConfig):
    finetuning_method: Literal["xattn", "noxattn", "full"] = "xattn"  # official --finetuning_method xattn
    iterations: int = Field(1500, ge=1)  # official --num_train_steps 1500
    lr: float = Field(1e-5, gt=0)  # official --learning_rate 1e-5 (AdamW)
    weight_decay: float = Field(1e-4, ge=0)  # official --weight_decay 1e-4
    max_grad_norm: float = Field(1.0, gt=0)  # official --max_grad_norm 1.0
    ema_decay: float = Field(0.999, ge=0, lt=1)  # official --ema_decay 0.999
    guidance_scale: float = Field(3.0, ge=0)  # official --guidance_scale 3.0 (sampling z_t)
    sample_steps: int = Field(50, ge=2)  # official --num_ddim_steps 50
    concept_method: Literal["iterative", "composite", "random"] = "iterative"  # official --concept_method
    seed: int = 42  # run_sdd_nudity.sh --seed 42


@register
class SDD(Eraser):
    name = "sdd"
    summary = ("self-distillation: the concept's noise estimate is pulled to the model's own unconditional one "
               "on latents from an EMA teacher, which becomes the result")
    changes = "UNet cross-attention layers (finetuning_method xattn; noxattn or full on request)"
    source = ("Kim et al., Towards Safe Self-Distillation of Internet-Scale Text-to-Image Diffusion Models, "
              "ICML 2023 workshop; nannullna/safe-diffusion")
    multi_concept = True
    Config = SDDConfig
    strength = {"lr": "lr"}
    budget = {"iterations": "steps", "sample_steps": "sample_steps"}

    def check(self, pipe, req: EraseRequest, cfg: SDDConfig):
        check_request(pipe, req)
        a = adapter_for(pipe)
        a.check_prompt(", ".join(req.targets), "joined targets")
        parameter_group(a.unet, cfg.finetuning_method)

    def erase(self, pipe, req: EraseRequest, cfg: SDDConfig) -> dict:
        a = adapter_for(pipe)
        student = a.unet
        teacher = copy.deepcopy(student).eval().requires_grad_(False)  # the EMA model
        params = parameter_group(student, cfg.finetuning_method)
        freeze_except(student, params)
        ema = dict(parameter_group(teacher, cfg.finetuning_method))
        targets = list(req.targets)
        embs = a.encode([", ".join(targets), ""] + targets)[0]
        c_p, null, removing = embs[:1], embs[1:2], embs[2:]
        gen = torch.Generator().manual_seed(cfg.seed)
        T = a.train_scheduler.config.num_train_timesteps
        S = cfg.sample_steps

        def compute_loss(step):
            if cfg.concept_method == "iterative":
                c_s = removing[step % len(targets)][None]
            elif cfg.concept_method == "random":
                c_s = removing[int(torch.randint(len(targets), (1,), generator=gen))][None]
            else:
                c_s = c_p
            k = int(torch.randint(0, S, (1,), generator=gen))
            t = torch.randint(round((1 - (k + 1) / S) * T), round((1 - k / S) * T), (1,), generator=gen)
            z_t, _ = sample_until(a, teacher, c_p, null, S, k, cfg.guidance_scale, gen)
            with torch.no_grad():
                e_0 = a.denoise(student, z_t, t, null)
            return F.mse_loss(a.denoise(student, z_t, t, c_s), e_0)

        @torch.no_grad()
        def ema_update(_step):  # theta_EMA <- m theta_EMA + (1 - m) theta
            for n, p in params:
                ema[n].mul_(cfg.ema_decay).add_(p.detach(), alpha=1 - cfg.ema_decay)

        loop = FineTune(params, AdamW(lr=cfg.lr, weight_decay=cfg.weight_decay), max_grad_norm=cfg.max_grad_norm,
                        after_step=ema_update)
        before = {n: p.detach().clone() for n, p in ema.items()}
        loop.run(cfg.iterations, compute_loss, self.progress(cfg.iterations))
        student.requires_grad_(False)
        pipe.unet = teacher
        return {f"unet.{n}": p.detach().cpu().clone() for n, p in ema.items() if not torch.equal(p, before[n])}
