"""STEREO: A Two-Stage Framework for Adversarially Robust Concept Erasing from Text-to-Image Diffusion Models
(Srivatsan, Shamshad, Naseer, Patel, Nandakumar; CVPR 2025, arXiv 2408.16807). Official code:
koushiksrivats/robust-concept-erasing (train.py, utils/stereo.py, utils/apg.py; README training command).

Stage 1, Search Thoroughly Enough (STE): n_iterations rounds of adversarial training. Each round
  (a) erases the current concept c from the current model with ESD's objective and APG's normalised
      negative guidance (utils/apg.normalized_guidance, eta = 1, no momentum, no norm threshold):

          L = || eps_theta(x_t, c) - [eps*(x_t, c) - (g - 1)(d_perp + eta d_par)] ||^2,
          d = eps*(x_t, c) - eps*(x_t, "")

      (d_par: d's component along eps*(x_t, c)); eps* the model as it was at the start of the round, x_t
      drawn by the model being trained (guidance 3, k ~ U{1..48} of 50 sampler steps); g = 2 makes the goal
      the unconditional prediction;
  (b) attacks the erased model with concept inversion: a new token embedding v learnt by textual inversion
      (the plain denoising loss on images of the concept, prompts "a photo of a <v>", ...) so that the
      erased model regenerates the concept from it;
  (c) the next round erases <v> itself.
Stage 2, Robustly Erase Once (REO): the ORIGINAL model is fine-tuned once on the target and the first
num_of_adv_concepts adversarial tokens together, with a compositional, APG-normalised goal that moves away
from every erased concept and towards one anchor concept per step (normalized_compositional_guidance):

    goal = eps*(x_t, "") + (s - 1) APG(eps*(x_t, a) - eps*(x_t, "")) - (s + 1) mean_c APG(eps*(x_t, c) - eps*(x_t, ""))

    L = || eps_theta(x_t, c_k) - goal ||^2,   c_k and the anchor a drawn stratified over the iterations,
                                              x_t drawn by the model being trained from c_k.

Defaults: train.py argparse (iterations 200 per erasing stage, negative_guidance 2.0, ste_lr 5e-6, reo_lr
2e-5, ci_lr 5e-3 AdamW, 3000 textual-inversion steps, generic prompt "a photo of a",
compositional_guidance_scale 2, learnable_property object) and the README's training command (train_method
noxattn, n_iterations 2, num_of_adv_concepts 2, initializer_token 'person'; the argparse help's other
choices are 'object' and 'art', which the mini world's tokenizer does not have as one token).
The gallery: 500 images of the target prompt from the original model, 50 sampler steps, guidance 7.5 (the
README's generate_images.py command and its defaults); each STE round inverts its own 1/n_iterations share
(TextualInversionDataset's subsets).

Anchors (REO's positive concepts). The official code reads a list of anchor prompts per concept from
utils/anchor_prompts.json (for nudity: scenes with a nude figure). igmu uses --anchor and --preserve when
given, else the generic retain prompts (common.generic_retain) that name no target.

Differences from the official code, stated exactly:
  * The gallery is the original model's sampler output kept as latents (official: decoded PNGs re-encoded
    by the VAE, with random flips); x_t for erasing comes from igmu's sample_until (the pipeline's own
    sampler, stopped after k of 50 steps; official: DDIM and the CompVis index mapping k -> 1000 k / 50).
  * The adversarial tokens are learnt embedding vectors placed in the prompt (igmu's slot mechanism,
    diffusion/prompt_attack.py) instead of new tokenizer entries; textual inversion uses 8 of textual
    inversion's object (or style) templates.
  * Textual-inversion timesteps are drawn from 0..998 as in the official code.
"""
from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ..diffusion.arch import adapter_for
from ..diffusion.noise import diffusion_target, noised
from ..diffusion.prompt_attack import encode_slots
from ..diffusion.sampling import concept_latents, sample_until
from ..errors import UserError
from .base import EraseRequest, Eraser, MethodConfig, register
from .common import anchor_text, check_request, generic_retain
from .train import AdamW, FineTune, module_parameters

# textual inversion's prompt templates (Gal et al. 2023; the official utils/dataset.py lists), first 8 of each
TEMPLATES = {
    "object": ["a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
               "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}"],
    "style": ["a painting in the style of {}", "a rendering in the style of {}",
              "a cropped painting in the style of {}", "the painting in the style of {}",
              "a clean painting in the style of {}", "a dirty painting in the style of {}",
              "a dark painting in the style of {}", "a picture in the style of {}"],
}


class STEREOConfig(MethodConfig):
    train_method: Literal["noxattn", "xattn", "full", "xattn-strict"] = "noxattn"  # README --train_method noxattn
    iterations: int = Field(200, ge=1)  # official --iterations 200 (each erasing stage)
    negative_guidance: float = Field(2.0, ge=0)  # official --negative_guidance 2.0
    ste_lr: float = Field(5e-6, gt=0)  # official --ste_lr 0.5e-5 (AdamW)
    reo_lr: float = Field(2e-5, gt=0)  # official --reo_lr 2e-5 (AdamW)
    ci_lr: float = Field(5e-3, gt=0)  # official --ci_lr 5e-3 (AdamW, x batch 1)
    ti_steps: int = Field(3000, ge=1)  # official --ti_max_train_steps 3000
    n_iterations: int = Field(2, ge=1)  # README --n_iterations 2 (argparse 4)
    num_adv_concepts: int = Field(2, ge=0)  # README --num_of_adv_concepts 2 (argparse 4)
    compositional_guidance_scale: float = Field(2.0, ge=0)  # official --compositional_guidance_scale 2
    apg_eta: float = Field(1.0, ge=0)  # official normalized_guidance eta=1.0
    initializer_token: str = "person"  # README --initializer_token 'person' (argparse choices person/object/art)
    learnable_property: Literal["object", "style"] = "object"  # official --learnable_property default
    gallery_images: int = Field(500, ge=1)  # README generate_images.py --num_images 500
    gallery_steps: int = Field(50, ge=2)  # generate_images.py --num_inference_steps 50
    gallery_guidance: float = Field(7.5, ge=0)  # generate_images.py --guidance_scale 7.5
    sample_steps: int = Field(50, ge=3)  # official nsteps = 50 (x_t of the erasing stages)
    sample_guidance: float = Field(3.0, ge=0)  # official diffusion(..., guidance_scale=3)
    seed: int = 42  # official seed 42


def apg(diff: torch.Tensor, cond: torch.Tensor, eta: float) -> torch.Tensor:
    """APG's normalised update: diff's component orthogonal to cond plus eta times its parallel component
    (per sample, over C x H x W; official utils/apg.project, no momentum, no norm threshold)."""
    d, c = diff.double(), F.normalize(cond.double().flatten(1), dim=1).view_as(cond)
    par = (d * c).flatten(1).sum(1).view(-1, *([1] * (d.dim() - 1))) * c
    return ((d - par) + eta * par).to(diff.dtype)


class _Concept:
    """A concept as conditioning: a text, or a learnt token embedding in a prompt (slot)."""

    def __init__(self, pipe, text: str | None = None, ids=None, vector=None):
        self.a, self.text, self.ids, self.vector = adapter_for(pipe), text, ids, vector

    @torch.no_grad()
    def cond(self) -> torch.Tensor:
        if self.text is not None:
            return self.a.encode([self.text])[0]
        return encode_slots(self.a, self.ids, [1], self.vector[None])


def slot_prompt(pipe, template: str, token: str) -> tuple[torch.Tensor, int]:
    """Token ids of template.format(token) and the position of `token` (a single token)."""
    a = adapter_for(pipe)
    ids = a.token_ids(template.format(token), pad=True)
    tok = a.token_ids(token, special=False)
    return torch.tensor([ids]), ids.index(tok[0])


def erase_round(a, teacher, student, params, concepts: list[_Concept], goal_of, lr: float, iterations: int,
                cfg: STEREOConfig, rng: np.random.Generator, advance, stage: str):
    """One erasing stage: `iterations` AdamW steps on || student(x_t, c_k) - goal ||^2 (x_t drawn by the student)."""
    null = a.encode([""])[0]
    conds = [c.cond() for c in concepts]
    gen = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))
    order = np.concatenate([rng.permutation(len(concepts)) for _ in range(-(-iterations // len(concepts)))])

    def compute_loss(i):
        k = int(order[i])
        stop = int(rng.integers(1, cfg.sample_steps - 1))  # official torch.randint(1, nsteps - 1)
        xt, t = sample_until(a, student, conds[k], null, cfg.sample_steps, stop, cfg.sample_guidance, gen)
        with torch.no_grad():
            goal = goal_of(teacher, xt, t, k, conds, null, i)
        return F.mse_loss(a.denoise(student, xt, t, conds[k]), goal)
    FineTune(params, AdamW(lr=lr)).run(iterations, compute_loss, lambda n=1, **info: advance(n, stage=stage, **info))


@register
class STEREO(Eraser):
    name = "stereo"
    summary = ("two stages: adversarial rounds of erasing and textual-inversion attacks collect adversarial "
               "tokens; then the original model is erased once from the target and those tokens, towards anchors")
    changes = "UNet non-cross-attention layers (train_method noxattn; xattn or full on request)"
    source = ("Srivatsan et al., STEREO: A Two-Stage Framework for Adversarially Robust Concept Erasing from "
              "Text-to-Image Diffusion Models, CVPR 2025; koushiksrivats/robust-concept-erasing")
    Config = STEREOConfig
    strength = {"ste_lr": "lr", "reo_lr": "lr"}
    budget = {"iterations": "steps", "ti_steps": "steps:inversion", "gallery_images": "images",
              "gallery_steps": "sample_steps", "sample_steps": "sample_steps"}

    def check(self, pipe, req: EraseRequest, cfg: STEREOConfig):
        check_request(pipe, req)
        a = adapter_for(pipe)
        if len(a.token_ids(cfg.initializer_token, special=False)) != 1:
            raise UserError(f"initializer_token {cfg.initializer_token!r} must be one token of this tokenizer "
                            f"(the official choices: person, object, art)")
        module_parameters(a.unet, cfg.train_method)

    def erase(self, pipe, req: EraseRequest, cfg: STEREOConfig) -> dict:
        a = adapter_for(pipe)
        original = a.unet.eval().requires_grad_(False)
        target = req.targets[0]
        rng = np.random.default_rng(cfg.seed)
        total = cfg.n_iterations * (cfg.iterations + cfg.ti_steps) + cfg.iterations
        advance = self.progress(total)
        gallery, _ = concept_latents(a, original, [target], cfg.gallery_images, cfg.gallery_steps,
                                     cfg.gallery_guidance, cfg.seed)
        g = cfg.negative_guidance

        def ste_goal(teacher, xt, t, k, conds, null, _i):  # normalized_guidance(positive, neutral, g)
            pos, neu = a.denoise(teacher, xt, t, conds[k]), a.denoise(teacher, xt, t, null)
            return pos - (g - 1) * apg(pos - neu, pos, cfg.apg_eta)

        # ---- stage 1: STE -------------------------------------------------------------------------------
        current = copy.deepcopy(original)
        concept = _Concept(a, text=target)
        adversarial = []
        share = max(1, len(gallery) // cfg.n_iterations)
        for r in range(cfg.n_iterations):
            teacher = copy.deepcopy(current).requires_grad_(False)
            params = module_parameters(current, cfg.train_method)
            current.requires_grad_(False)
            for _, p in params:
                p.requires_grad_(True)
            erase_round(a, teacher, current, params, [concept], ste_goal, cfg.ste_lr, cfg.iterations, cfg, rng,
                        advance, f"STE {r + 1} erase")
            current.requires_grad_(False)
            images = gallery[(r * share) % len(gallery):][:share]
            concept = self._invert(a, current, images, cfg, rng, advance, f"STE {r + 1} inversion")
            adversarial.append(concept)

        # ---- stage 2: REO on the original model ------------------------------------------------------------
        erase = [_Concept(a, text=target)] + adversarial[:cfg.num_adv_concepts]
        anchors = [p for p in dict.fromkeys(([anchor_text(req)] if anchor_text(req) else []) + list(req.preserve))]
        anchors = anchors or generic_retain(req.targets)
        anchor_conds = [a.encode([p])[0] for p in anchors]
        rounds = -(-cfg.iterations // len(anchors))
        anchor_order = np.concatenate([rng.permutation(len(anchors)) for _ in range(rounds)])
        s = cfg.compositional_guidance_scale

        def reo_goal(teacher, xt, t, _k, conds, null, i):  # normalized_compositional_guidance
            e0 = a.denoise(teacher, xt, t, null)
            neg = sum(apg(a.denoise(teacher, xt, t, c) - e0, a.denoise(teacher, xt, t, c), cfg.apg_eta)
                      for c in conds) / len(conds)
            ea = a.denoise(teacher, xt, t, anchor_conds[int(anchor_order[i])])
            return e0 + (s - 1) * apg(ea - e0, ea, cfg.apg_eta) + (-s - 1) * neg

        student = copy.deepcopy(original)
        params = module_parameters(student, cfg.train_method)
        student.requires_grad_(False)
        for _, p in params:
            p.requires_grad_(True)
        before = {n: p.detach().clone() for n, p in params}
        erase_round(a, original, student, params, erase, reo_goal, cfg.reo_lr, cfg.iterations, cfg, rng, advance,
                    "REO")
        student.requires_grad_(False)
        pipe.unet = student
        return {f"unet.{n}": p.detach().cpu().clone() for n, p in params if not torch.equal(p.detach(), before[n])}

    def _invert(self, a, model, images: torch.Tensor, cfg: STEREOConfig, rng, advance, stage: str) -> _Concept:
        """Concept inversion: a token embedding that makes `model` denoise `images` (the plain diffusion loss)."""
        table = a.token_embeddings()
        init_id = a.token_ids(cfg.initializer_token, special=False)[0]
        vector = table.weight[init_id].detach().clone().float().requires_grad_(True)
        prompts = [slot_prompt(a, tpl, cfg.initializer_token) for tpl in TEMPLATES[cfg.learnable_property]]
        sched = a.train_scheduler
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))

        def compute_loss(_step):
            ids, pos = prompts[int(rng.integers(len(prompts)))]
            x0 = images[int(rng.integers(len(images)))][None]
            t = torch.randint(0, 999, (1,), generator=gen)  # official torch.randint(0, 999)
            xt, t, noise = noised(sched, x0, gen, t)
            cond = encode_slots(a, ids, [pos], vector[None])
            return F.mse_loss(a.denoise(model, xt, t, cond).float(), diffusion_target(sched, x0, noise, t).float())
        # official: AdamW on the token embedding, lr x batch size 1, constant schedule
        FineTune([vector], AdamW(lr=cfg.ci_lr)).run(cfg.ti_steps, compute_loss,
                                                    lambda n=1, **info: advance(n, stage=stage, **info))
        ids, _ = slot_prompt(a, "{}", cfg.initializer_token)  # the next round erases the token alone
        return _Concept(a, ids=ids, vector=vector.detach().clone())
