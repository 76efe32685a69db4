"""Task Vectors: "Robust Concept Erasure Using Task Vectors" (Pham, Marshall, Hegde, Cohen; arXiv 2404.03631,
2024), after task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023).

Erasure by weight arithmetic, independent of the prompt: fine-tune the model to generate the concept, take
the displacement as the concept's task vector, and subtract it:

    theta_ft = argmin_theta  E_{x ~ concept, t, eps} || eps_theta(x_t, c, t) - eps ||^2      (from theta_pre)
    tau = theta_ft - theta_pre,        theta_erased = theta_pre - alpha tau

The concept's images are drawn by the model itself from the target prompt (latents), the fine-tuning loss
is the plain denoising loss on them with the target prompt. alpha is the edit strength; the paper estimates
it with Diverse Inversion (a diverse set of learnt word embeddings that each regenerate the concept: the
smallest alpha that erases all of them) and may apply tau to a subset of the weights only.

Official code: none released (the paper lists no repository; paperswithcode: "No code implementations
yet"). What igmu implements, stated exactly:
  * The fine-tune / subtract core above. Diverse Inversion is NOT implemented: alpha is a plain option
    (default 1, the task-negation unit of Ilharco et al.), the knob that calibration sets. edit_group picks
    the parameters tau is applied to (default: all trained ones).
  * The fine-tuning budget is igmu's own, not the paper's (not available to igmu): AdamW with Ilharco et
    al.'s lr 1e-5 and weight decay 0.1, 200 steps at batch 4 over 64 images of the concept drawn in 50
    sampler steps at guidance 7.5, the whole UNet trained. Calibration (igmu calibrate) sets lr, steps and
    alpha on calibration concepts.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..diffusion.arch import adapter_for
from ..diffusion.noise import diffusion_loss
from ..diffusion.sampling import concept_latents
from ..errors import UserError
from .base import EraseRequest, Eraser, MethodConfig, register
from .common import check_request
from .train import AdamW, FineTune, cycling_batches, freeze_except, parameter_group


class TaskVectorConfig(MethodConfig):
    alpha: float = Field(1.0, gt=0)  # edit strength: task negation's unit (Ilharco et al. 2023); paper: Diverse Inv.
    train_group: Literal["full", "xattn", "noxattn", "crossattn_kv"] = "full"  # igmu: the whole UNet
    edit_group: Literal["trained", "xattn", "noxattn", "crossattn_kv"] = "trained"  # where tau is applied
    iterations: int = Field(200, ge=1)  # igmu's budget (the paper's is not available)
    lr: float = Field(1e-5, gt=0)  # Ilharco et al. 2023 fine-tuning lr 1e-5 (AdamW)
    weight_decay: float = Field(0.1, ge=0)  # Ilharco et al. 2023 weight decay 0.1
    batch_size: int = Field(4, ge=1)  # igmu
    images: int = Field(64, ge=1)  # igmu: images of the concept, per target
    sample_steps: int = Field(50, ge=2)  # igmu: drawn in 50 sampler steps
    guidance_scale: float = Field(7.5, ge=0)  # igmu: at guidance 7.5
    seed: int = 0


@register
class TaskVector(Eraser):
    name = "taskvector"
    summary = "fine-tune the UNet on the concept's own images, then subtract alpha times that weight change"
    changes = "UNet weights of the edit group (default: every UNet parameter)"
    source = ("Pham, Marshall, Hegde, Cohen, Robust Concept Erasure Using Task Vectors, 2024 (no official code); "
              "task arithmetic: Ilharco et al., ICLR 2023")
    multi_concept = True
    Config = TaskVectorConfig
    strength = {"lr": "lr"}  # the paper's own knob, alpha, is an option too (Diverse Inversion not implemented)
    budget = {"iterations": "steps", "images": "images", "sample_steps": "sample_steps"}

    def check(self, pipe, req: EraseRequest, cfg: TaskVectorConfig):
        check_request(pipe, req)
        a = adapter_for(pipe)
        parameter_group(a.unet, cfg.train_group)
        if cfg.edit_group != "trained":
            trained = {n for n, _ in parameter_group(a.unet, cfg.train_group)}
            if not {n for n, _ in parameter_group(a.unet, cfg.edit_group)} & trained:
                raise UserError(f"edit_group {cfg.edit_group!r} shares no parameter with train_group "
                                f"{cfg.train_group!r}: the task vector would be zero there")

    def erase(self, pipe, req: EraseRequest, cfg: TaskVectorConfig) -> dict:
        a = adapter_for(pipe)
        unet = a.unet
        params = parameter_group(unet, cfg.train_group)
        pre = {n: p.detach().clone() for n, p in params}  # theta_pre
        x0, which = concept_latents(a, unet, list(req.targets), cfg.images, cfg.sample_steps, cfg.guidance_scale,
                                    cfg.seed)
        cond = a.encode(list(req.targets))[0][which]
        freeze_except(unet, params)
        batches = cycling_batches(len(x0), cfg.batch_size, np.random.default_rng(cfg.seed))
        gen = torch.Generator().manual_seed(cfg.seed)

        def compute_loss(_step):
            idx = batches.next()
            return diffusion_loss(a, unet, x0[idx], cond[idx], gen)
        FineTune(params, AdamW(lr=cfg.lr, weight_decay=cfg.weight_decay)).run(cfg.iterations, compute_loss,
                                                                              self.progress(cfg.iterations))
        unet.requires_grad_(False)
        edit = None if cfg.edit_group == "trained" else {n for n, _ in parameter_group(unet, cfg.edit_group)}
        changed = {}
        with torch.no_grad():
            for n, p in params:
                tau = p - pre[n]  # the task vector
                p.copy_(pre[n] - cfg.alpha * tau if edit is None or n in edit else pre[n])
                if not torch.equal(p, pre[n]):
                    changed[f"unet.{n}"] = p.detach().cpu().clone()
        return changed
