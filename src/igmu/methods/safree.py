"""SAFREE: Training-Free and Adaptive Guard for Safe Text-to-Image and Video Generation (Yoon, Yu, Patil,
Yao, Bansal; ICLR 2025, arXiv 2410.12761). Official code: jaehong31/SAFREE (generate_safree.py,
models/modified_stable_diffusion_pipeline.py, scripts/run_nudity.sh, run_artist.sh).

Training-free, applied while sampling. For each prompt:

1. Concept subspace. C holds the pooled text embeddings of the unsafe concepts (here: the targets);
   P_c = C (C^T C)^+ C^T projects onto their span.
2. Trigger tokens. For each of the prompt's n tokens, p_i is the pooled embedding of the prompt with
   token i masked (replaced by token id 0); d_i = ||(I - P_c) p_i|| is how far the prompt without token i
   lies from the concept subspace. Token i is a trigger when d_i >= (1 + alpha) mean_{j != i} d_j
   (removing it moves the prompt away from the concept).
3. Projection. P_m = M (M^T M)^+ M^T projects onto the span of the masked embeddings (the prompt's own
   input space); each trigger token's embedding e becomes (I - P_c) P_m e, the other tokens stay.
4. Self-validating filter. beta = 1 - mean cos((I - P_c) P_m e_j, e_j) over the prompt's active tokens
   (start, words, end); the filtered embeddings are used for the sampler steps i <= round(up_t *
   sigmoid(2 k (10 beta - t0))) and the plain ones after (t0 = 5.333, k = 2.5 for nudity; t0 = 5.5,
   k = 3.5 for artists; official f_beta).
5. The targets, joined by ", ", are the negative prompt (generate_safree.py passes
   negative_prompt = ", ".join(negative_prompt_space) to the pipeline).

Defaults: alpha 0.01 (--sf_alpha), self-validating filter on and up_t 10 (both released scripts pass
-svf; --up_t 10), category "nudity" (--category default), the concept list = the targets (the artist
script's negative_prompt_space is the artist's name; the nudity script's is a fixed list of 17 sexual
phrases: pass them as several --target to reproduce it), negative prompt on.

Differences from the official code, stated exactly:
  * Latent re-attention (the paper's adaptive Fourier filtering of the UNet's skip features) is not
    implemented. In the released SD scripts it does nothing: generate_safree.py registers the FreeU-style
    up blocks without their `safree` mode, so their filter branch only builds a NotImplementedError
    that is never raised (free_lunch_utils.register_free_upblock2d / register_free_crossattn_upblock2d);
    the extra UNet branch the pipeline computes for it (-lra) is discarded. igmu skips both.
  * up_t counts sampler steps as the official loop does; the released scripts sample 50 steps, so at
    igmu's 20 steps the filtered embeddings act for a larger share of sampling.
  * A prompt longer than the tokenizer's context is truncated before masking, as in the official code;
    the mask id 0 is the tokenizer's id 0 ('!' in CLIP's vocabulary), as in the official code.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from ..diffusion.arch import adapter_for
from ..diffusion.sampling import pipeline_images
from ..errors import UserError
from .base import EraseRequest, Eraser, MethodConfig, register
from .common import check_targets, spec_sampler
from .negprompt import negative_prompts

SVF = {"nudity": (5.333, 2.5), "artist": (5.5, 3.5)}  # official f_beta: (midpoint t, slope k)


class SAFREEConfig(MethodConfig):
    alpha: float = Field(0.01, ge=0)  # official --sf_alpha 0.01 (trigger-token margin)
    self_validation: bool = True  # official scripts pass -svf
    up_t: int = Field(10, ge=0)  # official --up_t 10 (steps that may use the filtered embeddings)
    category: Literal["nudity", "artist"] = "nudity"  # official --category default; sets f_beta's constants
    negative_prompt: bool = True  # official: the concepts joined by ", " are the negative prompt
    mask_token_id: int = Field(0, ge=0)  # official _masked_encode_prompt: masked_ids[i, i+1] = 0


def projector(E: torch.Tensor) -> torch.Tensor:
    """E (E^T E)^+ E^T for the columns of E (d x k): the projection onto their span (official projection_matrix)."""
    return E @ torch.linalg.pinv(E.T @ E) @ E.T


def pooled(pipe, ids: torch.Tensor) -> torch.Tensor:
    """The text encoder's pooled embedding of token ids (N x L): the final hidden state at the first
    end-of-text token, which is what CLIPTextModel's pooler_output is."""
    a = adapter_for(pipe)
    hs = a.text_rows(a.encode_ids(ids)).double().cpu()
    eos = a.tokenizer.eos_token_id
    where = [int((row == eos).nonzero()[0]) for row in ids]
    return torch.stack([hs[i, w] for i, w in enumerate(where)])


def beta_steps(beta: float, up_t: int, category: str) -> int:
    """The official f_beta (sigmoid type): round(up_t * sigmoid(2 k (10 beta - t)))."""
    t0, k = SVF[category]
    return round(up_t / (1 + math.exp(-2.0 * k * (10 * beta - t0))))


@torch.no_grad()
def safree_embedding(pipe, prompt: str, P_c: torch.Tensor, spec: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(plain, filtered conditioning (L x D), last step using the filtered one) of one prompt."""
    a = adapter_for(pipe)
    ids = a.tokenize([prompt])
    plain = a.text_rows(a.encode_ids(ids))[0].double().cpu()
    n_t = min(len(a.token_ids(prompt, special=True)), a.max_length) - 2  # real tokens between start and end
    if n_t < 1:
        return plain, plain, -1
    masked = ids.repeat(n_t, 1)
    for i in range(n_t):
        masked[i, i + 1] = spec["mask_token_id"]
    p = pooled(a, masked)  # n_t x d
    d = p.shape[1]
    away = torch.eye(d, dtype=torch.float64) - P_c
    P_m = projector(p.T)
    dist = (away @ p.T).norm(dim=0)
    others = torch.stack([torch.cat([dist[:i], dist[i + 1:]]).mean() for i in range(n_t)])
    trigger = ~(dist < (1 + spec["alpha"]) * others)  # official rm_vector == 0 (NaN mean: trigger)
    projected = (away @ P_m @ plain.T).T  # every row through (I - P_c) P_m
    filtered = plain.clone()
    rows = torch.arange(1, n_t + 1)[trigger]
    filtered[rows] = projected[rows]
    last = 10 ** 9  # without the self-validating filter: every step (official re_attn_t window -1..1001)
    if spec["self_validation"]:
        active = plain[:n_t + 2]
        beta = 1 - float(torch.cosine_similarity(projected[:n_t + 2], active, dim=-1).mean())
        last = beta_steps(beta, spec["up_t"], spec["category"])
    return plain, filtered, last


@torch.no_grad()
def safree_sample(pipe, prompts, negative, latents, steps, guidance, height, width, spec: dict):
    a = adapter_for(pipe)
    C = pooled(a, a.tokenize(spec["concepts"]))  # k x d
    P_c = projector(C.T)
    parts = [safree_embedding(a, p, P_c, spec) for p in prompts]
    plain = torch.stack([x[0] for x in parts])
    filtered = torch.stack([x[1] for x in parts])
    last = torch.tensor([x[2] for x in parts])
    if spec["negative_prompt"]:
        negative = negative_prompts(negative, {"negative_prompt": ", ".join(spec["concepts"])}, len(prompts))

    def conditioning_at(step):  # filtered embeddings for steps i <= last (official: i <= beta_adjusted)
        use = (step <= last).view(-1, 1, 1)
        return torch.where(use, filtered, plain).float()
    return pipeline_images(pipe, prompts, negative, latents, steps, guidance, height, width, conditioning_at)


@register
class SAFREE(Eraser):
    name = "safree"
    summary = ("inference-time: tokens whose removal moves the prompt away from the concept subspace are projected "
               "off it (for the first steps, self-validated), the concepts as negative prompt")
    changes = "no weights; the prompt's token embeddings while sampling, and the negative prompt"
    source = ("Yoon et al., SAFREE: Training-Free and Adaptive Guard for Safe Text-to-Image and Video Generation, "
              "ICLR 2025; jaehong31/SAFREE")
    multi_concept = True
    kind = "sampling"
    sampling_type = "safree"
    unet_passes_per_step = 2
    Config = SAFREEConfig
    strength = {"up_t": "up"}

    def check(self, pipe, req: EraseRequest, cfg: SAFREEConfig):
        a = adapter_for(pipe)
        check_targets(a, req)
        if a.tokenizer.eos_token_id is None:
            raise UserError("SAFREE needs the text encoder's pooled (end-of-text) embedding; this tokenizer has no "
                            "end-of-text token")
        if cfg.mask_token_id >= len(a.tokenizer):
            raise UserError(f"mask_token_id {cfg.mask_token_id} is not in this tokenizer's vocabulary "
                            f"({len(a.tokenizer)} tokens)")
        if cfg.negative_prompt:
            a.check_prompt(", ".join(req.targets), "negative prompt")

    def sampling(self, req: EraseRequest, cfg: SAFREEConfig) -> dict:
        return {"type": self.sampling_type, "concepts": list(req.targets), **cfg.model_dump()}

    def sampler(self, spec: dict):
        return spec_sampler(self, spec, "concepts", safree_sample)
