"""ConceptPrune (Chavhan, Li, Hospedales; "ConceptPrune: Concept Editing in Diffusion Models via
Skilled Neuron Pruning", ICLR 2025).

Training-free. The second linear layer of every feed-forward block (FFN) in the
UNet's transformer blocks, W_l (d_out x d_ff, `ff.net.2`), reads the GEGLU
hidden units X_l (tokens x d_ff). For the denoising step t, layer l and a prompt
set P, the WANDA importance (Sun et al. 2024) of each weight is

    S^{t,l}_{ij}(P) = |W^l_{ij}| * || X^{t,l}_{:,j}(P) ||_2

where X^{t,l}(P) stacks the hidden-unit rows of every token (both halves of the
classifier-free-guidance batch) of every generation for P, each row scaled to
unit L2 norm (official wanda_receiver.py). A weight is "skilled" for the
target concept c at (t, l) when, within its output row i, it is among the
top k = floor(skill_ratio * d_ff) scores for the target prompts and its target
score beats the reference prompts' score:

    N^{t,l} = { (i, j) : S^{t,l}_{ij}(P_c) in top-k of row i  and  S^{t,l}_{ij}(P_c) > S^{t,l}_{ij}(P_ref) }

Skilled weights are aggregated over the first tau denoising steps, where the
paper argues the concept's coarse structure is decided: a weight is pruned
when it is skilled in more than select_ratio * tau of those steps
(select_ratio 0: the union), and pruning sets it to zero:
W^l <- W^l * (1 - M^l). Several concepts at once: the union
of their masks (official wanda/multi_concept_union.py). Only ff.net.2 weights
change (biases are kept, as in the official code).

In the official code (wanda/wanda.py, save_union_over_time.py) the "skilled
neurons" are these individual weights (i, j) of FFN-2, selected per output row
in the WANDA manner and stored as an element-wise mask; igmu prunes exactly
these weights, not whole hidden units (columns of W).

Prompts. Each (target, reference) pair is generated from the same seed, as in
the official code. The target prompt is `context.format(target)`, the
reference prompt `context.format(anchor)`, or the context without the target
when no anchor is given (official object prompts: "a parachute in a {scene}"
vs "a {scene}"; memorization prompts vs ""). Only the first tau sampler steps
are run, since later steps cannot change the selected set.

Defaults, from the official code (ruchikachavhan/concept-prune):
  * skill_ratio 0.01: configs/wanda_config.yaml (and scripts/wanda.sh for
    artist styles; the same scripts use 0.02 for ImageNette objects);
  * tau (timesteps) 10 and select_ratio 0.0 (union): scripts/wanda.sh and
    scripts/sd_2.sh, wanda/save_union_over_time.py --timesteps 10 --select_ratio 0.0;
  * 50 sampler steps and guidance 7.5: the diffusers StableDiffusionPipeline
    defaults, which the official observe_activation calls without arguments;
  * all ff.net.2 layers of the UNet (configs/wanda_config.yaml n_layers 16 =
    every transformer block of SD 1.x);
  * seed 0 for every generation (wanda_config.yaml seed: 0).

Simplifications: the official prompt sets are hand-written per concept type
(19 "things" for styles, 8-13 scenes for objects, a list of people for nudity);
an eraser receives only the target, so igmu builds pairs from `contexts`
(default "{}": the target alone against the empty prompt) and draws `samples`
pairs (default 10, close to the official 8-19 prompts), pair k using context
k mod len(contexts) and seed seed + k (the official uses seed 0 for every
prompt, which varies only through the prompts). The sampler is the pipeline's
own scheduler. k is at least 1 per row, so that narrow layers (d_ff < 100, as in
test models) are not silently left unpruned.

Mini model. The official defaults run unchanged on the shipped mini model
(d_ff 128-256, so k = 1-2 weights per output row per step; about 10 s on one
CPU core); no scaling. Measured at the time of writing (object "circle", 12
forget and 12 retain prompts, mini detector): the defaults prune 535 weights
(0.7% of the FFN-2 weights, 0.035% of the UNet) and leave the images
unchanged (target shown 12/12, retain 12/12); even skill_ratio 0.3 (17,214
weights) only reaches 11/12 shown with retain 10/12 (with anchor "square":
9/12 and 6/12). The mini model's FFN activations are shaped far more by the
image than by the prompt, so few weights are concept-specific there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..diffusion.arch import adapter_for
from ..diffusion.sampling import sample_latents
from ..errors import UserError
from .base import EraseRequest, Eraser, MethodConfig, register


class ConceptPruneConfig(MethodConfig):
    skill_ratio: float = Field(0.01, gt=0, le=1)  # configs/wanda_config.yaml skill_ratio: 0.01 (objects: 0.02)
    timesteps: int = Field(10, ge=1)  # tau: scripts/wanda.sh save_union_over_time.py --timesteps 10
    select_ratio: float = Field(0.0, ge=0, lt=1)  # scripts/wanda.sh --select_ratio 0.0 (union over the tau steps)
    sample_steps: int = Field(50, ge=2)  # diffusers SD pipeline default steps (official observe_activation)
    guidance_scale: float = Field(7.5, ge=0)  # diffusers SD pipeline default guidance_scale
    contexts: list[str] = Field(default_factory=lambda: ["{}"], min_length=1)  # igmu: "{}" = target vs empty prompt
    samples: int = Field(10, ge=1)  # (target, reference) pairs; the official prompt lists have 8-19 entries
    seed: int = 0  # configs/wanda_config.yaml seed: 0


def ffn_layers(unet) -> list[tuple[str, torch.nn.Linear]]:
    """(name, Linear) of the second FFN layer (ff.net.2) of every transformer block of the UNet."""
    out = [(n, m) for n, m in unet.named_modules() if n.endswith("ff.net.2") and isinstance(m, torch.nn.Linear)]
    if not out:
        raise UserError("this model's UNet has no transformer feed-forward layers (ff.net.2), "
                        "so ConceptPrune cannot edit it")
    return out


def _fill(context: str, word: str) -> str:
    return " ".join(context.replace("{}", word).split())


class _ActivationNorms:
    """Per (step, layer): sum over tokens of the unit-normalised GEGLU rows squared (official ColumnNormCalculator)."""

    def __init__(self, layers):
        self.layers = layers
        self.step = 0
        self.sumsq: dict[tuple[int, str], torch.Tensor] = {}

    def hook(self, name):
        def pre(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            x = F.normalize(x, p=2, dim=1)
            key = (self.step, name)
            s = (x * x).sum(0).cpu()
            self.sumsq[key] = self.sumsq[key] + s if key in self.sumsq else s
        return pre

    def __enter__(self):
        self.handles = [m.register_forward_pre_hook(self.hook(n)) for n, m in self.layers]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return False

    def norms(self, step: int, name: str) -> torch.Tensor:
        return self.sumsq[(step, name)].sqrt()


@torch.no_grad()
def _observe(pipe, layers, conds, uncond, noise, cfg, advance) -> _ActivationNorms:
    """Run the first tau sampler steps for each prompt (rows of conds) from its noise, recording FFN-2 inputs."""
    rec = _ActivationNorms(layers)

    def on_step(k, _t, _x):  # label the activations recorded during step k
        rec.step = k
        advance(1)

    with rec:
        for start in range(0, conds.shape[0], 4):
            cond = conds[start:start + 4]
            sample_latents(pipe, None, cond, uncond.expand(len(cond), -1, -1), cfg.sample_steps, cfg.guidance_scale,
                           noise=noise[start:start + 4], stop=cfg.timesteps, on_step=on_step)
    return rec


def skilled_mask(W: torch.Tensor, norm_target: torch.Tensor, norm_ref: torch.Tensor, ratio: float) -> torch.Tensor:
    """Skilled weights of one layer at one step: row-wise top-k WANDA scores for the target that beat the reference."""
    A = W.detach().abs().double().cpu()
    s_tgt, s_ref = A * norm_target[None, :], A * norm_ref[None, :]
    k = max(1, int(ratio * W.shape[1]))
    mask = torch.zeros_like(s_tgt, dtype=torch.bool)
    mask.scatter_(1, torch.topk(s_tgt, k, dim=1).indices, True)
    return mask & (s_tgt > s_ref)


@register
class ConceptPrune(Eraser):
    name = "conceptprune"
    summary = "training-free: zero the FFN weights whose WANDA scores are specific to the concept in early steps"
    changes = "UNet feed-forward output weights (ff.net.2.weight), a few elements each"
    source = ("Chavhan et al., ConceptPrune: Concept Editing in Diffusion Models via Skilled Neuron Pruning, "
              "ICLR 2025; ruchikachavhan/concept-prune")
    multi_concept = True
    Config = ConceptPruneConfig
    architectures = {"sd": None, "sdxl": None}  # SD3 / FLUX.1: not yet ported (docs/architectures.md)
    strength = {"skill_ratio": "up"}
    budget = {"samples": "images"}

    def check(self, pipe, req: EraseRequest, cfg: ConceptPruneConfig):
        a = adapter_for(pipe)
        ffn_layers(a.unet)
        if cfg.timesteps > cfg.sample_steps:
            raise UserError(f"conceptprune timesteps ({cfg.timesteps}) cannot exceed sample_steps ({cfg.sample_steps})")
        for c in cfg.contexts:
            if "{}" not in c:
                raise UserError(f"conceptprune context {c!r} has no {{}} where the target goes")
        for t in req.targets:
            a.check_prompt(t, "target")
            for c in cfg.contexts:
                a.check_prompt(_fill(c, t), "target prompt")
        if req.anchor and req.anchor.strip():
            for c in cfg.contexts:
                a.check_prompt(_fill(c, req.anchor.strip()), "reference prompt")

    @torch.no_grad()
    def erase(self, pipe, req: EraseRequest, cfg: ConceptPruneConfig) -> dict:
        a = adapter_for(pipe)
        unet = a.unet.eval()
        layers = ffn_layers(unet)
        dev, dtype = unet.device, unet.dtype
        anchor = req.anchor.strip() if req.anchor and req.anchor.strip() else ""
        ctx = [cfg.contexts[k % len(cfg.contexts)] for k in range(cfg.samples)]
        ref_prompts = [_fill(c, anchor) for c in ctx]
        noise = torch.cat([torch.randn(a.latent_shape(1), generator=torch.Generator().manual_seed(cfg.seed + k))
                           for k in range(cfg.samples)])  # pair k: the same seed for target and reference
        uncond = a.encode([""])[0].to(dev, dtype)
        runs = -(-cfg.samples // 4) * cfg.timesteps
        advance = self.progress((len(req.targets) + 1) * runs)

        ref = _observe(a, layers, a.encode(ref_prompts)[0].to(dev, dtype), uncond, noise, cfg, advance)
        masks = {n: torch.zeros(m.weight.shape, dtype=torch.bool) for n, m in layers}
        for target in req.targets:
            tgt_prompts = [_fill(c, target) for c in ctx]
            tgt = _observe(a, layers, a.encode(tgt_prompts)[0].to(dev, dtype), uncond, noise, cfg, advance)
            for name, lin in layers:
                count = torch.zeros(lin.weight.shape, dtype=torch.int32)
                for k in range(cfg.timesteps):
                    count += skilled_mask(lin.weight, tgt.norms(k, name), ref.norms(k, name), cfg.skill_ratio)
                masks[name] |= count > cfg.select_ratio * cfg.timesteps  # union over concepts
        changed = {}
        for name, lin in layers:
            m = masks[name].to(lin.weight.device)
            if m.any():
                lin.weight.masked_fill_(m, 0.0)
                changed[f"unet.{name}.weight"] = lin.weight.detach().cpu().clone()
        return changed
