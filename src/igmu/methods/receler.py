"""Receler: Reliable Concept Erasing of Text-to-Image Diffusion Models via Lightweight Erasers
(Huang, Chang, Tsai, Lai, Yang, Wang; ECCV 2024).

A lightweight eraser E_l is added after the cross-attention of every transformer
block l of the UNet, on the cross-attention's output o_l (official
receler/erasers/ldm_erasers.py: x = E(attn2(norm2(x))) + attn2(norm2(x)) + x),
and only the erasers are trained; the UNet stays frozen. Three parts:

* erasing loss (ESD's, official train_receler.py), on x_t drawn by sampling
  the target with the current model (erasers on, guidance 3) for a random number
  of sampler steps, with the eraser-equipped model's prediction under the
  adversarial prompt [c; P]:
      L_erase = || eps_E(x_t, [c; P], t) - (eps(x_t, "", t) - eta (eps(x_t, c, t) - eps(x_t, "", t))) ||^2
  (eps without E: the original model).
* concept-localised regularisation (official receler/concept_reg.py): the
  eraser's output must stay ~0 outside the concept's region M, the thresholded
  cross-attention map of the target's word tokens in the original model on x_t:
      L_reg = mean_l  sum_pixels mean_channels (E_l(o_l) (1 - M_l))^2 / sum(1 - M_l),
      L = L_erase + alpha L_reg.
  The map is averaged over the word's tokens and the heads, min-max normalised
  per image and thresholded at mask_thres.
* adversarial prompt learning (official train_receler.py): before each eraser
  step, advrs_iters Adam steps on num_advrs_prompts soft prompt embeddings P
  that minimise || eps_E(x_t, [c; P], t) - eps(x_t, c, t) ||^2, the prompt with
  which the current erasers let the concept back; the eraser step then erases
  under that prompt. igmu runs this with the shared inner loop
  `attacks.adversarial.optimise_prompt` (discrete=False, the frozen text encoder).

The eraser, and why igmu's is linear. The official eraser is a bottleneck
adapter E(o) = U GELU(D o + b_D) + b_U (D: rank x dim, U: dim x rank,
zero-initialised, rank 128). An igmu artifact holds only changed tensors of
the model's existing parameters, so that plain diffusers loads it; a GELU
between D and U cannot be written into the existing weights. igmu therefore
trains the same adapter WITHOUT the nonlinearity, E(o) = U (D o + b_D) + b_U.
Then o + E(o) is affine in o, and with o = W x + b (attn2.to_out[0]) it folds
exactly into that layer:
      W' = (I + U D) W,      b' = (I + U D) b + U b_D + b_U,
and the artifact is the changed attn2.to_out.0 weight and bias of every
transformer block. (A linear eraser of rank r is a rank-r update of to_out; it
can still act per pixel, because its input, the attention output, already
depends on the prompt and on the position.) Rank: the official 128, capped at
each layer's width (on the mini model, 32 and 64: the eraser is full-rank there).

Defaults (official jasper0314-huang/Receler, train_receler.py argparse and
README): iterations 500, lr 3e-4 (Adam on the erasers), eraser_rank 128,
concept_reg_weight 0.1, mask_thres 0.1, advrs_iters 50, num_advrs_prompts 16,
start_advrs_train 0, adversarial Adam lr 0.1 with weight decay 0.1 (hard-coded),
start_guidance 3, negative_guidance 1, ddim_steps 50. Several targets (the
official --seperator): one word drawn at random per iteration, one set of erasers.

Differences from the official code, stated exactly:
  * Linear eraser (above), folded into attn2.to_out.0.
  * Adversarial prompt. Official: P is 16 vectors written into the text
    encoder's OUTPUT right after the target's tokens, initialised U(0, 1) once
    and kept (per word) across iterations, Adam lr 0.1 with weight decay 0.1.
    igmu: P is 16 soft token embeddings right after the start token, passed
    through the frozen text encoder (optimise_prompt, "prefix_k"), initialised
    at random vocabulary tokens at every iteration, Adam lr 0.1 without weight
    decay (optimise_prompt has no initial-vector or weight-decay option).
    Note: in the released train_receler.py, `emb_n[:, advrs_indices, :].data =
    advrs_prompt_embs[...]` assigns to a copy (advanced indexing), so the learned
    embeddings never reach emb_n and the released code trains on the plain
    prompt; igmu follows the paper and trains under the adversarial prompt.
  * The eraser step re-evaluates the model under the final adversarial prompt
    (official: reuses the forward pass of the last attack step, made before the
    last update of P).
  * Masks: the official code uses only the 16 x 16 cross-attention maps (a
    quarter of SD's 64 x 64 latent side, "following MasaCtrl"). On the mini model
    that resolution is 4 x 4 (the middle block alone), so igmu averages the maps
    of every cross-attention layer, each upsampled (bilinear) to the latent
    size, before normalising and thresholding; the mask is then resized
    (nearest) to each layer, as in the official code.
  * The training timestep is the sampler's timestep at the drawn step, as in
    igmu's ESD (official: a random DDPM step within the matching band, ESD's
    CompVis convention); the sampler is the pipeline's own scheduler (official:
    DDIM, eta 0).
  * --preserve (no counterpart in the official code): for preserved prompts the
    concept mask is empty, so the same regulariser asks the erasers to output 0
    everywhere on x_t under each preserved prompt (weight concept_reg_weight).
    Without --preserve nothing is added.

Defaults are the published values. At them one iteration costs 51 UNet forward and backward passes plus
up to 100 sampling passes, about an hour for 500 iterations on 2 CPU cores of the mini model, and the
erasers barely move a small model (200 iterations at lr 3e-4 left the circle in 24/24 forget images,
retain 0.96). For small models use a preset (igmu calibrate; presets/mini.yaml): it caps the
iterations, adversarial steps and sampler steps by the rule's compute budget and chooses the lr on
calibration concepts. The rank, regularisation weight, threshold and number of adversarial embeddings
stay published.

Exploratory runs made before presets existed, at igmu's former hand scaling for the mini model
(iterations 100, advrs_iters 5, sample_steps 10, lr 5e-3):
Mini model, 100 iterations (24 forget / 24 retain images,
igmu.world.erasure_checks; share of forget images still showing a circle /
share of retain images drawn as asked; original 1.00 / 1.00): circle at lr
3e-3: 0.83 / 0.58; 5e-3: 0.62 / 0.67; 1e-2: 0.08 / 0.46; at lr 1e-2 also
striped 0.00 / 0.17 and hex mark 0.00 / 0.38 (figure kept 0.00). At the default
lr 5e-3: striped 0.21 / 0.33, hex mark 0.00 / 0.00 (figure kept 0.00). What
costs the retain accuracy is the adversarial prompt learning: hex mark at lr
5e-3 with advrs_iters=0 (no attack; what the released code effectively trains,
see above) gives 0.46 / 0.83 (figure kept 0.46); with 6 instead of 16
adversarial embeddings (the same share of the mini model's 32-token context as
16 of 77) still 0.00 / 0.00. Our reading: a linear eraser trained under arbitrary
soft prompts learns a broad change of every cross-attention output, which a
nonlinear eraser might confine better (not tested here); the concept mask at the official
threshold 0.1 covers most of the image on this model (its word-token attention
is nearly flat), so the regulariser protects little, and the official method
has no retain term (--preserve adds one here). The default keeps the paper's
adversarial training; the measured cost is in docs/methods.md.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ..diffusion.arch import adapter_for
from ..diffusion.attention import attention_grid, record_cross_attention
from ..diffusion.prompt_attack import optimise_prompt, slot_conditioning, slotted_ids
from ..diffusion.sampling import sample_until
from ..diffusion.tokens import token_positions
from .base import EraseRequest, Eraser, MethodConfig, register
from .common import check_request
from .train import Adam, FineTune


class ReceLerConfig(MethodConfig):
    iterations: int = Field(500, ge=1)  # official --iterations 500
    lr: float = Field(3e-4, gt=0)  # official --lr 3e-4 (Adam on the erasers)
    eraser_rank: int = Field(128, ge=1)  # official --eraser_rank 128 (capped at each layer's width)
    concept_reg_weight: float = Field(0.1, ge=0)  # official --concept_reg_weight 0.1 (alpha)
    mask_thres: float = Field(0.1, gt=0, lt=1)  # official --mask_thres 0.1
    advrs_iters: int = Field(50, ge=0)  # official --advrs_iters 50; 0: no attack
    num_advrs_prompts: int = Field(16, ge=1)  # official --num_advrs_prompts 16
    advrs_lr: float = Field(0.1, gt=0)  # official train_receler.py: Adam(lr=0.1, weight_decay=0.1) on the prompts
    start_advrs_train: int = Field(0, ge=0)  # official --start_advrs_train 0
    negative_guidance: float = Field(1.0, ge=0)  # official --negative_guidance 1 (eta)
    guidance_scale: float = Field(3.0, ge=0)  # official --start_guidance 3: sampling x_t
    sample_steps: int = Field(50, ge=2)  # official --ddim_steps 50
    seed: int = 0


class LinearEraser(torch.nn.Module):
    """E(o) = U (D o + b_D) + b_U: the official bottleneck adapter without its GELU (see module docstring).
    D is initialised as torch's nn.Linear (U(-1/sqrt(dim), 1/sqrt(dim))), U at zero, as officially."""

    def __init__(self, dim: int, rank: int, bias: bool, generator: torch.Generator):
        super().__init__()
        self.down = torch.nn.Linear(dim, rank, bias=bias)
        self.up = torch.nn.Linear(rank, dim, bias=bias)
        bound = dim ** -0.5
        with torch.no_grad():
            self.down.weight.copy_((torch.rand(rank, dim, generator=generator) * 2 - 1) * bound)
            if bias:
                self.down.bias.copy_((torch.rand(rank, generator=generator) * 2 - 1) * bound)
            torch.nn.init.zeros_(self.up.weight)
            if bias:
                torch.nn.init.zeros_(self.up.bias)

    def forward(self, o):
        return self.up(self.down(o))

    @torch.no_grad()
    def fold(self, W: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W', b') with W' x + b' = o + E(o) for o = W x + b."""
        U, D = self.up.weight.double(), self.down.weight.double()
        M = torch.eye(U.shape[0], dtype=torch.float64) + U @ D
        W_new = (M @ W.double()).to(W.dtype)
        if b is None:
            return W_new, None
        b_new = M @ b.double() + U @ self.down.bias.double() + self.up.bias.double()
        return W_new, b_new.to(b.dtype)


class _Erasers:
    """One LinearEraser after every attn2.to_out[0] of the UNet (a forward hook: out + E(out)).
    `enabled` switches them all; while `outputs` is a list, each call appends (layer, E(out))."""

    def __init__(self, layers: list[tuple[str, torch.nn.Module]], rank: int, generator: torch.Generator):
        self.layers = layers
        self.enabled, self.outputs = True, None
        self.modules, self.handles = [], []
        for name, attn in self.layers:
            lin = attn.to_out[0]
            er = LinearEraser(lin.out_features, min(rank, lin.out_features), lin.bias is not None, generator)
            er.to(lin.weight.device, lin.weight.dtype)
            self.modules.append(er)
            self.handles.append(lin.register_forward_hook(self._hook(len(self.modules) - 1)))

    def _hook(self, i):
        def hook(_mod, _inp, out):
            if not self.enabled:
                return out
            e = self.modules[i](out)
            if self.outputs is not None:
                self.outputs.append((i, e))
            return out + e
        return hook

    def parameters(self):
        return [p for m in self.modules for p in m.parameters()]

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []


def _heat(maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Average of per-layer attention maps (each B x q) upsampled to the latent size: B x 1 x H x W."""
    out = 0
    for m in maps:
        h, w = attention_grid(m.shape[1], size)
        out = out + F.interpolate(m.reshape(-1, 1, h, w), size=size, mode="bilinear", align_corners=False)
    return out / len(maps)


def _reg(outputs, masks: dict | None, size) -> torch.Tensor:
    """Official concept-localised regulariser: per layer, sum over pixels of the channel-mean squared eraser
    output outside the mask, over the outside area; averaged over layers. masks None: outside = everywhere."""
    total = 0
    for _, e in outputs:  # e: B x q x dim
        q = e.shape[1]
        if masks is None:
            flip = torch.ones(e.shape[0], q, 1, dtype=e.dtype, device=e.device)
        else:
            h, w = attention_grid(q, size)
            key = (h, w)
            if key not in masks:
                masks[key] = F.interpolate(masks["full"], size=(h, w), mode="nearest")
            flip = (1 - masks[key]).reshape(e.shape[0], q, 1).to(e)
        total = total + ((e * flip) ** 2).mean(-1).sum() / (flip.sum() + 1e-9)
    return total / max(1, len(outputs))


@register
class ReceLer(Eraser):
    name = "receler"
    summary = ("train lightweight erasers after each cross-attention with the ESD loss under learned adversarial "
               "prompts, kept silent outside the concept's attention mask; linear, folded into attn2.to_out")
    changes = "UNet cross-attention output projections (attn2 to_out.0 weight and bias)"
    source = ("Huang et al., Receler: Reliable Concept Erasing of Text-to-Image Diffusion Models via Lightweight "
              "Erasers, ECCV 2024; jasper0314-huang/Receler")
    multi_concept = True
    Config = ReceLerConfig
    architectures = {"sd": None, "sdxl": None,
                     "sd3": "Receler's erasers follow every cross-attention layer; SD3's MMDiT has none",
                     "flux": "Receler's erasers follow every cross-attention layer; FLUX.1's MMDiT has none"}
    strength = {"lr": "lr"}
    budget = {"iterations": "steps", "advrs_iters": "inner_steps", "sample_steps": "sample_steps"}

    def check(self, pipe, req: EraseRequest, cfg: ReceLerConfig):
        a = adapter_for(pipe)
        check_request(a, req)
        a.cross_attentions()
        if cfg.advrs_iters:
            for t in req.targets:
                slotted_ids(a, t, cfg.num_advrs_prompts, [0] * cfg.num_advrs_prompts)

    def erase(self, pipe, req: EraseRequest, cfg: ReceLerConfig) -> dict:
        a = adapter_for(pipe)
        unet = a.unet.eval().requires_grad_(False)
        a.text_encoder.requires_grad_(False)
        gen = torch.Generator().manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        targets = list(req.targets)
        embs, _ = a.encode(targets + [""])
        null = embs[-1:]
        keep = a.encode(list(req.preserve))[0] if req.preserve else None
        words = [token_positions(a.token_ids(t), a.token_ids(t, special=False)) for t in targets]
        size = a.sample_size
        erasers = _Erasers(a.cross_attentions(unet), cfg.eraser_rank, gen)
        params = erasers.parameters()

        def compute_loss(it):
            w = int(rng.integers(len(targets)))
            cond = embs[w:w + 1]
            stop = int(rng.integers(0, cfg.sample_steps))
            g = torch.Generator().manual_seed(int(rng.integers(0, 2 ** 31)))
            with torch.no_grad():  # x_t from the current model (erasers on), as officially
                xt, t = sample_until(a, unet, cond, null, cfg.sample_steps, stop, cfg.guidance_scale, g)
                erasers.enabled = False  # the original model
                e_0 = a.denoise(unet, xt, t, null)
                maps = []
                with record_cross_attention(a, lambda _n, p: maps.append(p[:, :, :, words[w]].mean(-1).mean(1)), unet):
                    e_p = a.denoise(unet, xt, t, cond)
                erasers.enabled = True
                heat = _heat(maps, size)
                lo, hi = heat.amin(dim=(2, 3), keepdim=True), heat.amax(dim=(2, 3), keepdim=True)
                masks = {"full": ((heat - lo) / (hi - lo).clamp_min(1e-12) >= cfg.mask_thres).float()}
                goal = e_0 - cfg.negative_guidance * (e_p - e_0)
            if cfg.advrs_iters and it >= cfg.start_advrs_train:  # adversarial prompt against the current erasers
                for p in params:
                    p.requires_grad_(False)
                adv = optimise_prompt(
                    a, targets[w], lambda h: F.mse_loss(a.denoise(unet, xt, t, h).float(), e_p.float()),
                    k=cfg.num_advrs_prompts, steps=cfg.advrs_iters, lr=cfg.advrs_lr, discrete=False, generator=gen)
                for p in params:
                    p.requires_grad_(True)
                c_n = slot_conditioning(a, adv)
            else:
                adv, c_n = None, cond
            erasers.outputs = []
            e_n = a.denoise(unet, xt, t, c_n)
            loss_erase = F.mse_loss(e_n.float(), goal.float())
            loss_reg = _reg(erasers.outputs, masks, size)
            loss = loss_erase + cfg.concept_reg_weight * loss_reg
            info = {"erase": loss_erase.item(), "reg": loss_reg.item()}
            if keep is not None:  # igmu: preserved prompts, empty concept mask
                erasers.outputs = []
                a.denoise(unet, xt.expand(len(keep), -1, -1, -1), t, keep)
                loss_keep = _reg(erasers.outputs, None, size)
                loss = loss + cfg.concept_reg_weight * loss_keep
                info["keep"] = loss_keep.item()
            erasers.outputs = None
            if adv is not None:
                info["attack"] = adv.losses[-1]
            return loss, info

        try:
            FineTune(params, Adam(lr=cfg.lr), checkpoint=[unet]).run(cfg.iterations, compute_loss, self.progress(cfg.iterations))
        finally:
            erasers.remove()
        changed = {}
        with torch.no_grad():
            for (name, attn), er in zip(erasers.layers, erasers.modules):
                lin = attn.to_out[0]
                W, b = er.fold(lin.weight.detach(), None if lin.bias is None else lin.bias.detach())
                lin.weight.copy_(W)
                changed[f"unet.{name}.to_out.0.weight"] = lin.weight.detach().cpu().clone()
                if b is not None:
                    lin.bias.copy_(b)
                    changed[f"unet.{name}.to_out.0.bias"] = lin.bias.detach().cpu().clone()
        return changed
