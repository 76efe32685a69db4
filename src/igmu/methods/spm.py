"""SPM: concept-SemiPermeable Membrane (Lyu, Yang, Hong, Chen, Jin, He, Xue, Han, Ding; "One-dimensional
Adapter to Rule Them All: Concepts, Diffusion Models and Erasing Applications", CVPR 2024).

A one-dimensional (rank-1) LoRA adapter M, the "membrane", is added to every Linear and Conv2d inside
the UNet's transformer blocks (Transformer2DModel: proj_in, attn1/attn2 q, k, v, out, the feed-forward
layers, proj_out), as in the official code (Con6924/SPM, src/models/spm.py: SPMNetwork targets
"Transformer2DModel"; rank 1, alpha 1, so W' = W + (alpha/r) B A with A: 1 x d_in, B: d_out x 1).
Only M is trained; the base model theta stays frozen.

Erasing loss (paper; train_spm.py and src/configs/prompt.py `_erase`): on latents x_t of the target,
the adapted model's prediction for the target c_tar is pulled to negative guidance away from it,
relative to the surrogate c_sur (the anchor; "" by default, i.e. the unconditional prediction):

    L_erase = || eps(x_t, c_tar | theta, M) - goal ||^2,
    goal    = eps(x_t, c_sur | theta) - eta [ eps(x_t, c_tar | theta) - eps(x_t, c_sur | theta) ]

Latent Anchoring (paper; `_erase_with_la` and src/engine/sampling.py `sample`): for surrogate
concepts e drawn around the text-embedding space, the adapted model must keep the original prediction,

    L_LA = E_e || eps(x_t, e | theta, M) - eps(x_t, e | theta) ||^2,     L = L_erase + lambda L_LA.

The official sampler draws each e as a whole text-encoder output tensor (tokens x width): a Gaussian
direction n / ||n||, accepted with probability 1 - cos(c_tar, n) (so concepts close to the target are
anchored less, distant ones more), scaled to U(0.8, 1.2) x ||c_tar||; 4 of them per iteration
(sampling_batch_size). These are points of the embedding space, not vocabulary words. igmu does the same.

x_t: each iteration samples the target with the adapted model (adapter on, classifier-free guidance 3)
for a random number k in [1, sample_steps) of the sampler's sample_steps steps, and trains at the
timestep reached (train_spm.py: `diffusion(..., total_timesteps=timesteps_to, guidance_scale=3)` with
the network enabled). The frozen predictions (theta) are taken with the adapter off.

Defaults (official configs/pikachu/config.yaml and prompt.yaml, the demo.ipynb defaults for SD v1.4):
rank 1 and alpha 1.0 (network), lr 1e-4 (train.lr / unet_lr), AdamW (official: bitsandbytes AdamW8bit,
whose defaults are betas (0.9, 0.999), weight decay 0.01, as torch.optim.AdamW here), lr schedule
cosine_with_restarts with 3 cycles and 500 warm-up steps of 3000 (kept here as the same fraction, 1/6,
of `iterations`), max_denoising_steps 30 (sample_steps), sampling guidance 3 (hard-coded in
train_spm.py), eta 1.0 (prompt.yaml guidance_scale, the demo's erasing_scale), la_strength 1000,
sampling_batch_size 4 (anchor_samples), batch 1, surrogate "" (prompt.yaml neutral), 3000 iterations.
igmu keeps all of them except four scaled for the mini model (see "Mini-model scaling" below).

Several targets ("SPMs can be flexibly combined"): one adapter per target, each trained alone on the
frozen base (the others switched off), then all merged into the weights at multiplier 1, which is how
the official inference code combines several SPM files (infer_spm.py sums the membranes).

What the artifact holds, exactly: the merged weights W + B A of the adapted layers (all of them change:
84 weight tensors on the mini model), keyed "unet.<name>". Facilitated Transport (paper:
at inference each membrane's multiplier is set per prompt to max(cosine similarity of the prompt's and
the target's text embeddings, share of the target's tokens in the prompt); infer_spm.py
`calculate_matching_score`, metric "clipcos_tokenuni") depends on the prompt, so it cannot live in
merged weights: it is NOT applied. The artifact equals the official "load SPM as a plain LoRA"
mode (demo notebook / SD-WebUI), which the README says has a larger effect on non-target concepts.

Differences from the official code, stated exactly:
  * Facilitated Transport not applied (see above); the adapter is merged at multiplier 1.
  * The sampler for x_t is the pipeline's own scheduler (official: DDIM), and the training timestep is
    the sampler's timestep after k steps (official: index k * 1000 / 30 of the 1000-step DDIM schedule,
    the same timestep up to rounding for DDIM).
  * Fixed resolution: the model's sample_size (official dynamic_resolution draws a random size between
    half and full resolution in 64-pixel buckets each iteration).
  * Predictions with guidance 1 are computed as the conditional prediction only (official: the
    unconditional and conditional passes, combined as u + 1 (c - u), the same value).
  * fp32 AdamW instead of 8-bit AdamW (CPU, no bitsandbytes).
  * Preserved concepts (--preserve, an igmu option; the official code has none) join the anchor batch
    of every iteration: L_LA averages over the random anchors and the preserved prompts' embeddings.
  * anchor_samples 0 (with no --preserve) is the official "erase" action (no Latent Anchoring).

Defaults are the published recipe (configs/pikachu: 3000 iterations, lr 1e-4, 30 sampler steps, LA
strength 1000). On the mini model one iteration at these settings costs about 1 s on a shared 2-core CPU
(drawing x_t dominates: up to 29 guided UNet passes), so 3000 iterations take about an hour. For small
models use a preset (igmu calibrate; presets/mini.yaml for the mini model): it caps the iterations and
sampler steps by the calibration rule's compute budget (warm-up and the 3 cosine cycles scale with
`iterations`) and chooses the learning rate on calibration concepts. The LA strength stays published
(1000; the official demo notes it "should be further tuned for other base models": a preset leaves it
to --set). Before presets, igmu's defaults were a hand scaling for the mini model (200 iterations,
lr 3e-3, 10 sampler steps, LA strength 100); at LA strength 1000 and lr 3e-3 the membrane barely moved the
target within 300 iterations (its prediction moved 0.06 of the way to the unconditional one).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ..diffusion.arch import adapter_for
from ..diffusion.sampling import sample_until
from ..errors import UserError
from .base import EraseRequest, Eraser, MethodConfig, register
from .lora import inject_lora, lora_parameters, merge_lora, only_adapters
from .train import AdamW, FineTune


class SPMConfig(MethodConfig):
    iterations: int = Field(3000, ge=1)  # official config.yaml train.iterations 3000
    lr: float = Field(1e-4, gt=0)  # official train.lr (unet_lr) 1e-4
    weight_decay: float = Field(0.01, ge=0)  # bitsandbytes AdamW8bit default (official optimizer_type AdamW8bit)
    warmup_fraction: float = Field(1 / 6, ge=0, lt=1)  # official lr_warmup_steps 500 of 3000 iterations
    lr_cycles: int = Field(3, ge=1)  # official lr_scheduler cosine_with_restarts, lr_scheduler_num_cycles 3
    rank: int = Field(1, ge=1)  # official network.rank 1: the "one-dimensional" adapter
    alpha: float = Field(1.0, gt=0)  # official network.alpha 1.0
    negative_guidance: float = Field(1.0, ge=0)  # official prompt.yaml guidance_scale 1.0 (demo erasing_scale)
    la_strength: float = Field(1000.0, ge=0)  # official prompt.yaml la_strength 1000 ("for SD v1.4")
    anchor_samples: int = Field(4, ge=0)  # official prompt.yaml sampling_batch_size 4; 0: no Latent Anchoring
    guidance_scale: float = Field(3.0, ge=0)  # sampling x_t: train_spm.py diffusion(..., guidance_scale=3)
    sample_steps: int = Field(30, ge=2)  # official train.max_denoising_steps 30
    seed: int = 0


def spm_targets(unet) -> list[str]:
    """Every Linear/Conv2d inside the UNet's Transformer2DModel blocks (official SPMNetwork targets)."""
    out = []
    for name, module in unet.named_modules():
        if type(module).__name__ != "Transformer2DModel":
            continue
        out += [f"{name}.{child}" for child, m in module.named_modules()
                if child and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    return out


def sample_anchors(target: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n surrogate embeddings around `target` (1 x L x D), as the official sampler draws them:
    a random direction accepted with probability 1 - cos(target, direction), scaled to
    U(0.8, 1.2) times the target's norm."""
    flat = target.reshape(-1).float().cpu()
    norm = flat.norm()
    out = []
    while len(out) < n:
        d = torch.randn(flat.shape, generator=generator)
        d = d / d.norm()
        sim = torch.dot(flat, d) / norm
        if torch.rand((), generator=generator) < 1 - sim:
            scale = 0.8 + 0.4 * torch.rand((), generator=generator)
            out.append((scale * norm * d).reshape(target.shape[1:]))
    return torch.stack(out).to(target.device, target.dtype)


@register
class SPM(Eraser):
    name = "spm"
    summary = ("train a rank-1 adapter (membrane) on the UNet's transformer layers to steer the concept "
               "to a surrogate, with Latent Anchoring elsewhere; merged into the weights")
    changes = "UNet transformer-block Linear/Conv2d weights (rank-1 update each), merged at multiplier 1"
    source = ("Lyu et al., One-dimensional Adapter to Rule Them All: Concepts, Diffusion Models and Erasing "
              "Applications, CVPR 2024; Con6924/SPM")
    multi_concept = True
    Config = SPMConfig
    architectures = {"sd": None, "sdxl": None}  # SD3 / FLUX.1: not yet ported (docs/architectures.md)
    strength = {"lr": "lr"}
    budget = {"iterations": "steps", "sample_steps": "sample_steps"}

    def check(self, pipe, req: EraseRequest, cfg: SPMConfig):
        a = adapter_for(pipe)
        for t in req.targets:
            a.check_prompt(t, "target")
        if req.anchor and req.anchor.strip():
            a.check_prompt(req.anchor, "anchor")
        for p in req.preserve:
            a.check_prompt(p, "preserved concept")
        if len(set(req.targets)) != len(req.targets):
            raise UserError("the same --target is given twice")
        if not spm_targets(a.unet):
            raise UserError("this model's UNet has no transformer blocks (Transformer2DModel), so SPM has "
                            "no layers to put its adapter on")

    def erase(self, pipe, req: EraseRequest, cfg: SPMConfig) -> dict:
        a = adapter_for(pipe)
        unet = a.unet.eval().requires_grad_(False)
        layers = spm_targets(unet)
        surrogate = req.anchor.strip() if req.anchor and req.anchor.strip() else ""
        embs, _ = a.encode(list(req.targets) + [surrogate, ""])
        n_t = len(req.targets)
        sur, null = embs[n_t:n_t + 1], embs[n_t + 1:]
        keep = a.encode(list(req.preserve))[0] if req.preserve else None
        advance = self.progress(cfg.iterations * n_t)
        adapters = []
        for i in range(n_t):
            name = f"spm{i}"
            inject_lora(unet, layers, cfg.rank, cfg.alpha, adapter=name, seed=cfg.seed + i)
            adapters.append(name)
            with only_adapters(unet, [name]):
                self._train(a, unet, name, embs[i:i + 1], sur, null, keep, cfg, cfg.seed + 7919 * i, advance)
        changed = merge_lora(unet, adapters)
        return {f"unet.{k}": v for k, v in changed.items()}

    def _train(self, a, unet, adapter, tar, sur, null, keep, cfg: SPMConfig, seed, advance):
        from diffusers.optimization import get_cosine_with_hard_restarts_schedule_with_warmup

        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)

        def compute_loss(_step):
            stop = int(rng.integers(1, cfg.sample_steps))  # official torch.randint(1, max_denoising_steps)
            g = torch.Generator().manual_seed(int(rng.integers(0, 2 ** 31)))
            with torch.no_grad():  # x_t from the adapted model, as in train_spm.py
                xt, t = sample_until(a, unet, tar, null, cfg.sample_steps, stop, cfg.guidance_scale, g)
            anchors = [sample_anchors(tar, cfg.anchor_samples, gen)] if cfg.anchor_samples else []
            if keep is not None:
                anchors.append(keep)
            anchors = torch.cat(anchors) if anchors else None
            n_a = 0 if anchors is None else len(anchors)
            with torch.no_grad(), only_adapters(unet, []):  # the frozen model theta
                conds = torch.cat([tar, sur] + ([anchors] if n_a else []))
                frozen = a.denoise(unet, xt.expand(len(conds), -1, -1, -1), t, conds)
                e_pos, e_neu, e_anc0 = frozen[:1], frozen[1:2], frozen[2:]
                goal = e_neu - cfg.negative_guidance * (e_pos - e_neu)
            conds = torch.cat([tar] + ([anchors] if n_a else []))
            out = a.denoise(unet, xt.expand(len(conds), -1, -1, -1), t, conds)
            loss_erase = F.mse_loss(out[:1], goal)  # L_erase
            loss = loss_erase
            if n_a:
                loss = loss + cfg.la_strength * F.mse_loss(out[1:], e_anc0)  # + lambda L_LA
            return loss, {"erase": loss_erase.item()}

        def schedule(opt):  # official cosine_with_restarts, warm-up and cycles scaled with `iterations`
            return get_cosine_with_hard_restarts_schedule_with_warmup(
                opt, num_warmup_steps=int(cfg.warmup_fraction * cfg.iterations), num_training_steps=cfg.iterations,
                num_cycles=cfg.lr_cycles)

        loop = FineTune(lora_parameters(unet, adapter), AdamW(lr=cfg.lr, weight_decay=cfg.weight_decay),
                        lr_schedule=schedule, checkpoint=[unet])
        loop.run(cfg.iterations, compute_loss, advance)
