"""AdaVD: Precise, Fast, and Low-cost Concept Erasure in Value Space: Orthogonal Complement Matters
(Wang, Li et al.; CVPR 2025, arXiv 2412.06143). Official code: WYuan1001/AdaVD
(src/main.py, demo.ipynb).

Training-free and applied while sampling: in every cross-attention layer, each token's value vector
v_i loses its projection onto the target concept's value vector at the same position, scaled by an
adaptive shift (the official cal_ortho_decomp):

    v_i' = v_i - lambda_i (<v_i, t_i> / <t_i, t_i>) t_i,        lambda_i = s * sigmoid(p (cos(v_i, t_i) - eps))

for every token but the start token (lambda_0 = 0). t_i is the layer's value of the target's "spread"
embedding: the target prompt's encoding with every position after the start token replaced by its
last word token (get_spread_embedding), so t_i is the same vector W_v c_last at every position i >= 1.
The projection keeps the orthogonal complement of the target (s = 1: exactly; s = 2 reflects a token
that is the target). Several targets: the projection onto their span, by Gram-Schmidt per position,
each basis vector's coefficient gated by its own cosine (the official multi-concept branch).

The official arithmetic works on the classifier-free-guidance pair: the unconditional and conditional
branches' values of one sample are concatenated per token, and so are the null prompt's and the target's
values (the hard-coded 16 = 2 branches x 8 heads of SD 1.4); the decomposition of that joint vector
changes both branches. igmu does the same (joint_cfg = true, the default). joint_cfg = false decomposes
the conditional values alone against t_i and leaves the unconditional branch as it is; without
classifier-free guidance (guidance <= 1) only the conditional branch exists and that is what is done.

Defaults: the adaptive shift on (token_sim: demo.ipynb "token_sim = True # whether to enable the adaptive
erasing shift"; main.py's flag is off unless given), p = 100, eps = 0.93, s = 2 (--sigmoid_a/b/c and
the demo: "sigmoid_a = 100 # p, sigmoid_b = 0.93 # epsilon, sigmoid_c = 2 # s"), values decomposed
(record_type 'values').

Differences from the official code, stated exactly:
  * decomp_timestep (skip the decomposition at timesteps <= it; default 0, i.e. never) is not offered.
  * Several targets: proper Gram-Schmidt; the official coefficients use the raw target vectors, which
    equals Gram-Schmidt for one or two targets only.
  * The attention itself is computed with diffusers' plain AttnProcessor arithmetic
    (igmu.diffusion.attention), the sampler is the pipeline's own (official: DPM-Solver++, 30 steps,
    guidance 7.5; those are generation settings, igmu's come from `igmu generate`).
"""
from __future__ import annotations

import torch
from pydantic import Field

from ..diffusion.arch import adapter_for
from ..diffusion.attention import edit_cross_attention_values
from ..diffusion.sampling import pipeline_images
from .base import EraseRequest, Eraser, MethodConfig, register
from .common import check_targets, spec_sampler


class AdaVDConfig(MethodConfig):
    token_sim: bool = True  # official demo.ipynb: the adaptive erasing shift on
    sigmoid_p: float = Field(100.0, ge=0)  # official --sigmoid_a 100 (p)
    sigmoid_eps: float = Field(0.93, ge=-1, le=1)  # official --sigmoid_b 0.93 (epsilon)
    sigmoid_s: float = Field(2.0, ge=0)  # official --sigmoid_c 2 (s)
    joint_cfg: bool = True  # official: decompose the unconditional and conditional values of a sample jointly


def spread_embedding(pipe, texts: list[str]) -> torch.Tensor:
    """Each text's encoding with every position after the start token set to its last word token's row
    (official get_spread_embedding: positions 1.. = the row before the first end-of-text token)."""
    a = adapter_for(pipe)
    hs, mask = a.encode(texts)
    hs = a.text_rows(hs).clone()
    for i in range(len(texts)):
        hs[i, 1:] = hs[i, int(mask[i].sum()) - 2]
    return hs


def gram_schmidt(Y: torch.Tensor) -> torch.Tensor:
    """P (... x n x n, lower triangular, unit diagonal) with P @ Y the Gram-Schmidt orthogonal (unnormalised)
    basis of the n rows of Y (... x n x d)."""
    n = Y.shape[-2]
    P = torch.eye(n, dtype=Y.dtype).expand(*Y.shape[:-2], n, n).clone()
    B = Y.clone()
    for i in range(1, n):
        for j in range(i):
            coef = (B[..., j, :] * Y[..., i, :]).sum(-1) / (B[..., j, :] ** 2).sum(-1).clamp_min(1e-30)
            P[..., i, :] -= coef.unsqueeze(-1) * P[..., j, :]
        B[..., i, :] = (P[..., i, :].unsqueeze(-2) @ Y).squeeze(-2)
    return P


def erased_component(x: torch.Tensor, y: torch.Tensor, spec: dict) -> torch.Tensor:
    """The part of x (... x L x d) AdaVD removes, for target vectors y (n x L x d), per token position."""
    p, eps, s = spec["sigmoid_p"], spec["sigmoid_eps"], spec["sigmoid_s"]

    def gate(cos):
        return s * torch.sigmoid(p * (cos - eps)) if spec["token_sim"] else torch.ones_like(cos)
    if len(y) == 1:
        t = y[0]
        coef = torch.nan_to_num(gate(torch.cosine_similarity(t, x, dim=-1)) * (t * x).sum(-1) / (t * t).sum(-1))
        coef[..., 0] = 0  # the start token is never changed
        return coef.unsqueeze(-1) * t
    Y = y.transpose(0, 1)  # L x n x d
    P = gram_schmidt(Y)
    basis = P @ Y  # L x n x d, orthogonal per position
    coef = torch.nan_to_num((basis * x.unsqueeze(-2)).sum(-1) / (basis * basis).sum(-1))  # ... x L x n
    coef[..., 0, :] = 0
    cos = gate(torch.cosine_similarity(Y, x.unsqueeze(-2), dim=-1))  # ... x L x n
    gated = P @ (cos.unsqueeze(-1) * Y)  # ... x L x n x d (official: bmm(project_matrix, cos * tar))
    return (coef.unsqueeze(-1) * gated).sum(-2)


def adavd_values(value: torch.Tensor, t_val: torch.Tensor, u_val: torch.Tensor, spec: dict, cfg_on: bool):
    """The decomposed values of one layer. value: B x L x d (B = 2N under CFG: unconditional rows first);
    t_val: n x L x d (targets' values), u_val: L x d (the null prompt's values)."""
    if cfg_on and spec["joint_cfg"]:
        n = value.shape[0] // 2
        x = torch.cat([value[:n], value[n:]], -1)
        y = torch.cat([u_val.expand(len(t_val), -1, -1), t_val], -1)
        x = x - erased_component(x.float(), y.float(), spec).to(x.dtype)
        d = value.shape[-1]
        return torch.cat([x[..., :d], x[..., d:]])
    if cfg_on:  # the conditional branch alone
        n = value.shape[0] // 2
        cond = value[n:] - erased_component(value[n:].float(), t_val.float(), spec).to(value.dtype)
        return torch.cat([value[:n], cond])
    return value - erased_component(value.float(), t_val.float(), spec).to(value.dtype)


def adavd_sample(pipe, prompts, negative_prompts, latents, steps, guidance, height, width, spec: dict):
    """The pipeline call with AdaVD's value decomposition in every cross-attention layer."""
    a = adapter_for(pipe)
    spread = spread_embedding(a, spec["targets"])
    null = a.text_rows(a.encode([""])[0])[0]
    layers = dict(a.cross_attentions())
    cfg_on = guidance > 1 and getattr(a.unet.config, "time_cond_proj_dim", None) is None  # diffusers' rule
    cache = {}

    def edit(name, value):
        if name not in cache:  # values depend on the text only: the same at every step
            to_v = layers[name].to_v
            with torch.no_grad():
                cache[name] = (to_v(spread.to(value.device, value.dtype)), to_v(null.to(value.device, value.dtype)))
        t_val, u_val = cache[name]
        return adavd_values(value, t_val, u_val, spec, cfg_on)
    with torch.no_grad(), edit_cross_attention_values(a, edit):
        return pipeline_images(pipe, prompts, negative_prompts, latents, steps, guidance, height, width)


@register
class AdaVD(Eraser):
    name = "adavd"
    summary = ("inference-time: each token's cross-attention value loses its adaptively gated projection onto "
               "the target's value (orthogonal complement in value space)")
    changes = "no weights; the cross-attention values while sampling"
    source = ("Wang et al., Precise, Fast, and Low-cost Concept Erasure in Value Space: Orthogonal Complement "
              "Matters, CVPR 2025; WYuan1001/AdaVD")
    multi_concept = True
    kind = "sampling"
    sampling_type = "adavd"
    unet_passes_per_step = 2
    Config = AdaVDConfig
    strength = {"sigmoid_eps": "down"}

    def check(self, pipe, req: EraseRequest, cfg):
        check_targets(pipe, req)
        adapter_for(pipe).cross_attentions()

    def sampling(self, req: EraseRequest, cfg: AdaVDConfig) -> dict:
        return {"type": self.sampling_type, "targets": list(req.targets), **cfg.model_dump()}

    def sampler(self, spec: dict):
        return spec_sampler(self, spec, "targets", adavd_sample)
