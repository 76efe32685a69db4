"""ScissorHands (Wu, Harandi; "Scissorhands: Scrub Data Influence via Connection Sensitivity in Networks",
ECCV 2024; official code JingWu321/Scissorhands).

Two steps.

1. Trim. Connection sensitivity (SNIP, Lee et al. 2019) of every UNet weight on the forget data:

       s_j = | w_j * sum_{b=1..prune_num} | d L_f(batch b) / d w_j | |,

   L_f the denoising loss of forget images with their prompt (official SD/shs_nsfw.py snip():
   model.shared_step, i.e. guidance 0; SD/shs_cls.py uses the guided loss with w = 7.5, as SalUn's
   saliency). The threshold is the (sparsity * N)-th smallest score over ALL UNet parameters, and every
   weight above it (the top 1 - sparsity fraction, 0.5% at the official sparsity 0.995) is re-initialised
   -- but only inside the layers the official SD code trims: the self-attention (attn1) of CompVis
   output_blocks.4 and output_blocks.7, i.e. diffusers up_blocks.1.attentions.1 and up_blocks.2.attentions.1.
   Weights are redrawn with kaiming_uniform_(a=0, nonlinearity="relu") (shs_nsfw.py), biases set to 0.

2. Repair. Fine-tune the trimmed model on retain data while keeping the forget data forgotten:

       L = L_diff(x_r, c_r) + lam * || eps(x_t^f, c_f) - sg[eps(x_t^f, c')] ||^2     (shs_nsfw.py, "pseudo")
       L = L_diff(x_r, c_r) - lam * L_diff(x_f, c_f)                                    (shs_cls.py, "ascent")

   with the gradient projection of the paper (Classification/unlearn/SHs_*.py, GEM's project2cone2): at
   the start of each epoch memory gradients m_k of the forgetting term are taken on memory_num forget
   batches (the classification code: m = grad(-CE) on forget data, the very term its loss minimises);
   whenever the update gradient g has <g, m_k> < 0 for some k (a step along -g would raise that term, i.e.
   undo forgetting) it is replaced by g~ = g + M^T v, v solving GEM's dual
   min_v 1/2 v^T (M M^T + 1e-3 I) v + (M g)^T v  s.t. v >= margin (margin 0.5, project2cone2's default).

Official defaults (SD/train_shs.sh, nudity line; the class line in brackets): sparsity 0.995 [0.999],
prune_num 10, lam 0.1, memory_num 1, lr 1e-5 [2e-5] Adam over every UNet parameter (train_method full),
5 [3] epochs, batch 16 [argparse 8]; pseudo prompt "a photo of a person wearing clothes" on SD v1.4
generations of nudity prompts (retain: the same clothed-person images).

igmu's version, stated exactly:
  * Data as SalUn's (salun.UnlearningData): forget_images samples per target, retain_images per retain
    prompt (--preserve, else common.GENERIC_RETAIN minus prompts naming a target, plus the anchor), drawn by
    the frozen original model. The pseudo prompt c' is --anchor, or a retain prompt drawn at random for
    each forget image at each step (see salun.py).
  * The scoring is salun.forget_gradients + salun.top_fraction_mask (shared with SalUn's saliency):
    prune_num random forget batches, |grad| of each summed, times |w|.
  * trim: official = the attn1 Linear layers of up_blocks.1.attentions.1 and up_blocks.2.attentions.1 that
    the model has; attn1 = every attn1; all = every Linear/Conv2d of the UNet. Only weights and biases of
    those Linear/Conv2d layers are re-initialised (a norm layer is never trimmed).
  * Projection is ON by default, as in the paper and the classification code; the released SD scripts
    define project2cone2 but never call it (their --project flag is unused), so the SD recipe has no
    official memory. igmu's memory is the gradient of the forgetting term of the loss, as in the
    classification code: of the random-label loss (forget_loss pseudo) or of -L_diff(x_f, c_f) (ascent).
    A first version used -L_diff as the memory with the pseudo loss: with margin 0.5 every projected step
    then carries at least half a step of gradient ascent on the denoising loss, and the mini model
    collapsed (circle at lr 3e-4: forget 0%, retain 0%; with margin 0: 4% / 25%; n = 24). The projection
    covers every trained parameter (the classification code projects only its trimmed layers). Each
    memory gradient is taken alone (the official loop accumulates them without zeroing; identical for
    memory_num 1). For one memory the dual is solved in closed form, v = max(-<m, g> / (|m|^2 + 1e-3),
    margin); for several, by projected coordinate descent (the official code calls quadprog).
  * One epoch is one shuffled pass over the forget set in batches, each paired with a retain batch (the
    official loop draws a random batch of each at every step).
  * The artifact holds every UNet tensor that changed (the repair trains them all).

Defaults are the published recipe (train_shs.sh nudity: lr 1e-5, 5 epochs, batch 16; 800 forget images
and 100 per retain prompt, drawn in 50 sampler steps at guidance 7.5). The mini UNet (1.5 M parameters)
does not move at lr 1e-5. For small models use a preset (igmu calibrate; presets/mini.yaml): it caps the
images and sampler steps by the rule's compute budget, raises the epochs by the factor the forget images
were cut (within the budget's step cap) and chooses the lr on calibration concepts. At the official
sparsity the trim re-initialises ~240 weights of the mini model (of ~7,700 above the threshold), and
trimming alone barely erases (circle: forget 92%, retain 100%). Exploratory runs before presets (40
epochs of 16 forget images at batch 8, 16 images per retain prompt, 10 sampler steps, guidance 5; circle,
n = 24, forget shown / retain as asked): lr 1e-4: 92% / 96%; lr 3e-4: 79% / 54%; without projection, lr
3e-4: 71% / 75%. Full-parameter Adam at 3e-4 costs retain accuracy faster than the weak forgetting term
(lam 0.1) erases.
"""
from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import Field

from ..diffusion.arch import adapter_for
from ..diffusion.noise import diffusion_loss
from ..errors import UserError
from .base import EraseRequest, Eraser, MethodConfig, register
from .salun import check_unlearning_request, forget_gradients, random_label_loss, top_fraction_mask, unlearning_setup
from .train import Adam, FineTune, changed_tensors, cycling_batches, epoch_batches

OFFICIAL_TRIM = ("up_blocks.1.attentions.1.", "up_blocks.2.attentions.1.")  # CompVis output_blocks.4 / .7


class ScissorHandsConfig(MethodConfig):
    sparsity: float = Field(0.995, ge=0, lt=1)  # official train_shs.sh nudity --sparsity 0.995 (class: 0.999)
    prune_num: int = Field(10, ge=1)  # official train_shs.sh --prune_num 10 (SNIP batches)
    snip_guidance: float = Field(0.0, ge=0)  # official shs_nsfw.py snip(): shared_step, no guidance (cls: 7.5)
    trim: Literal["official", "attn1", "all"] = "official"  # official shs_*.py: attn1 of output_blocks.4/.7
    lam: float = Field(0.1, ge=0)  # official train_shs.sh --lam 0.1
    forget_loss: Literal["pseudo", "ascent"] = "pseudo"  # official shs_nsfw.py (shs_cls.py: ascent)
    project: bool = True  # paper / Classification --project; the SD scripts never call the projection
    memory_num: int = Field(1, ge=1)  # official train_shs.sh --memory_num 1
    margin: float = Field(0.5, ge=0)  # official project2cone2(..., margin=0.5) (GEM)
    lr: float = Field(1e-5, gt=0)  # official train_shs.sh nudity --lr 1e-5 (class 2e-5), Adam
    epochs: int = Field(5, ge=1)  # official train_shs.sh nudity --epochs 5 (class 3)
    batch_size: int = Field(16, ge=1)  # official train_shs.sh nudity --batch_size 16
    forget_images: int = Field(800, ge=1)  # per target; official: a generated nudity set of 800 images
    retain_images: int = Field(100, ge=1)  # per retain prompt; official: a generated clothed set
    sample_steps: int = Field(50, ge=2)  # drawing the images; official: SD v1.4 generations, 50 steps
    guidance_scale: float = Field(7.5, ge=0)  # drawing the images; official 7.5
    seed: int = 0


def trim_layers(unet, which: str) -> list[str]:
    """Names of the Linear/Conv2d modules whose weights ScissorHands may re-initialise."""
    out = []
    for name, m in unet.named_modules():
        if not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        attn1 = ".attn1." in f".{name}."
        if which == "all" or (which == "attn1" and attn1) or (
                which == "official" and attn1 and name.startswith(OFFICIAL_TRIM)):
            out.append(name)
    return out


def reinit_like(p: torch.Tensor, is_bias: bool, generator: torch.Generator) -> torch.Tensor:
    """A fresh value for a trimmed tensor: kaiming_uniform_(a=0, relu) for weights, 0 for biases."""
    if is_bias or p.dim() < 2:
        return torch.zeros_like(p)
    fan_in = p[0].numel()
    bound = (6.0 / fan_in) ** 0.5  # kaiming_uniform_ with gain sqrt(2): sqrt(2) * sqrt(3 / fan_in)
    return (torch.rand(p.shape, generator=generator) * 2 - 1).to(p) * bound


def trim(unet, scores: dict, sparsity: float, layers: list[str], generator) -> int:
    """Re-initialise, inside `layers`, the weights whose score is in the global top 1 - sparsity; returns
    how many entries were trimmed."""
    mask = top_fraction_mask(scores, 1 - sparsity)
    params = dict(unet.named_parameters())
    n = 0
    with torch.no_grad():
        for layer in layers:
            for kind in ("weight", "bias"):
                name = f"{layer}.{kind}"
                if name not in params or not mask[name].any():
                    continue
                p, m = params[name], mask[name]
                p[m] = reinit_like(p, kind == "bias", generator)[m]
                n += int(m.sum())
    return n


def project_gradient(g: torch.Tensor, memories: torch.Tensor, margin: float, eps: float = 1e-3) -> torch.Tensor:
    """GEM's projection (project2cone2): g + M^T v, v = argmin 1/2 v^T (M M^T + eps I) v + (M g)^T v, v >= margin.
    g: p, memories M: t x p."""
    P = memories @ memories.T + eps * torch.eye(len(memories), dtype=memories.dtype, device=memories.device)
    q = memories @ g
    if len(memories) == 1:
        v = torch.clamp(-q / P[0, 0], min=margin)
    else:  # projected coordinate descent on the small box-constrained QP
        v = torch.full((len(memories),), float(margin), dtype=g.dtype, device=g.device)
        for _ in range(200):
            for k in range(len(v)):
                v[k] = torch.clamp(v[k] - (P[k] @ v + q[k]) / P[k, k], min=margin)
    return g + memories.T @ v


@register
class ScissorHands(Eraser):
    name = "scissorhands"
    summary = ("re-initialise the weights most connection-sensitive (SNIP) to the forget data, then repair on "
               "retain images with a projected gradient that keeps the forget loss from falling")
    changes = "every UNet parameter (the repair fine-tunes all; the trim re-initialises a few attn1 weights)"
    source = ("Wu & Harandi, Scissorhands: Scrub Data Influence via Connection Sensitivity in Networks, ECCV 2024; "
              "JingWu321/Scissorhands")
    multi_concept = True
    Config = ScissorHandsConfig
    architectures = {"sd": None, "sdxl": None}  # SD3 / FLUX.1: not yet ported (docs/architectures.md)
    strength = {"lr": "lr"}
    budget = {"epochs": "epochs", "batch_size": "batch", "forget_images": "images", "retain_images": "images_small", "sample_steps": "sample_steps"}

    def check(self, pipe, req: EraseRequest, cfg: ScissorHandsConfig):
        check_unlearning_request(pipe, req)
        if not trim_layers(adapter_for(pipe).unet, cfg.trim):
            hint = "; try --set trim=attn1 or --set trim=all" if cfg.trim != "all" else ""
            raise UserError(f"this model's UNet has no layers of kind trim={cfg.trim!r} to re-initialise{hint}")

    def erase(self, pipe, req: EraseRequest, cfg: ScissorHandsConfig) -> dict:
        a, base, data, rng, gen = unlearning_setup(pipe, req, cfg)
        unet = copy.deepcopy(base).requires_grad_(True)
        params = list(unet.parameters())
        per_epoch = -(-len(data.forget) // cfg.batch_size)
        advance = self.progress(cfg.prune_num + cfg.epochs * per_epoch)

        # 1. trim: SNIP scores |w * sum_b |grad_b||, top 1 - sparsity over the whole UNet, re-initialised in `trim`
        grads = forget_gradients(a, unet, data.forget, data.forget_cond, data.null, cfg.snip_guidance,
                                 cfg.batch_size, gen, rng, passes=cfg.prune_num, abs_each=True)
        scores = {n: (grads[n] * p.detach()).abs() for n, p in unet.named_parameters()}
        trimmed = trim(unet, scores, cfg.sparsity, trim_layers(unet, cfg.trim), gen)
        advance(cfg.prune_num, trimmed=trimmed)

        # 2. repair: L_r + lam * forget term, gradient projected so that the forget loss does not fall
        retain = cycling_batches(len(data.retain), cfg.batch_size, rng)
        state = {"batches": [], "memories": None, "projected": False}

        def compute_loss(_step):
            if not state["batches"]:  # a new epoch: memory gradients, then one shuffled pass over the forget set
                state["memories"] = self._memories(a, unet, data, cfg, params, gen, rng) if cfg.project else None
                state["batches"] = epoch_batches(len(data.forget), cfg.batch_size, rng)
            idx = state["batches"].pop(0)
            r = retain.next()
            l_r = diffusion_loss(a, unet, data.retain[r], data.retain_cond[r], gen)
            x, c = data.forget[idx], data.forget_cond[idx]
            if cfg.forget_loss == "pseudo":
                loss = l_r + cfg.lam * random_label_loss(a, unet, x, c, data.pseudo(len(idx), rng), gen)
            else:
                loss = l_r - cfg.lam * diffusion_loss(a, unet, x, c, gen)
            return loss, {"retain": l_r.item()}

        def project():  # GEM: where <g, m_k> < 0 for some memory, g <- g + M^T v
            memories = state["memories"]
            state["projected"] = False
            if memories is None:
                return
            g = torch.cat([p.grad.flatten().float() if p.grad is not None else torch.zeros(p.numel(), device=p.device)
                           for p in params])
            if bool((memories @ g < 0).any()):
                g = project_gradient(g.double(), memories.double(), cfg.margin).float()
                state["projected"] = True
                at = 0
                for p in params:
                    p.grad = g[at:at + p.numel()].view_as(p).clone()
                    at += p.numel()

        def report(k=1, **info):
            info["projected"] = state["projected"]
            advance(k, **info)

        FineTune(params, Adam(lr=cfg.lr), adjust_gradients=project, checkpoint=[unet]).run(
            cfg.epochs * per_epoch, compute_loss, report)
        unet.requires_grad_(False).eval()
        pipe.unet = unet
        return changed_tensors(unet.named_parameters(), dict(base.named_parameters()))

    @staticmethod
    def _memories(a, unet, data, cfg, params, gen, rng) -> torch.Tensor:
        """memory_num gradients of the forgetting term on random forget batches (memory_num x p): of the
        random-label loss (forget_loss pseudo) or of -L_diff (ascent, the classification code's -CE)."""
        out = []
        for _ in range(cfg.memory_num):
            idx = rng.choice(len(data.forget), size=min(cfg.batch_size, len(data.forget)), replace=False)
            x, c = data.forget[idx], data.forget_cond[idx]
            if cfg.forget_loss == "pseudo":
                loss = random_label_loss(a, unet, x, c, data.pseudo(len(idx), rng), gen)
            else:
                loss = -diffusion_loss(a, unet, x, c, gen)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            out.append(torch.cat([(torch.zeros_like(p) if g is None else g).flatten().float()
                                  for g, p in zip(grads, params)]))
        return torch.stack(out).detach()
