"""SPEED: Scalable, Precise, and Efficient Concept Erasure for Diffusion Models (Li, Wang, Hu, Jiang,
Liang, Hao, Ma, Feng; arXiv 2503.07392, ICLR 2026). Official code: Ouxiang-Li/SPEED, train_erase_null.py.

A closed-form edit of the cross-attention value projections W (attn2.to_v) in the null space of the
retain set, so that the target's last word token c maps where the anchor's a did while every retained
embedding keeps exactly its output. With T = mean_i c_i c_i^T and A = mean_i a_i c_i^T over the targets:

    erase weight   E = W (A - T) (I + T)^-1                                   (the unconstrained edit)
    retain set     R = last word tokens of the retain concepts that name no target,
                   kept by Influence-based Prior Filtering (IPF: ||E r|| above its mean over R), plus
                   Directed Prior Augmentation (DPA): aug_num copies r + n P_min, n ~ N(0, I),
                   P_min = v v^T for the right singular vector v of W's smallest singular value,
                   kept where ||E r'|| is above the mean over the copies
    null space     P = U_0 U_0^T, U_0 the eigenvectors of mean_r r r^T with eigenvalue < threshold
    null prior     K2 = [null prompt's start token, k-means centres (3) of its other tokens]   (d x 4)
    M = (T P + retain_scale I)^-1
    Delta = W (A - T) P (I - M K2 (K2^T P M K2 + lamb I)^-1 K2^T P) M,    W' = W + Delta

(official edit_model, baseline 'SPEED'). Defaults are the official argparse defaults: params V,
aug_num 10, threshold 0.1, retain_scale 1.0 (the README uses 0.05 for 10 celebrities), lamb 0.0,
IPF on (the README disables it for the celebrity sets), seed 0. The README's anchors: "" for
instances, "art" for styles, "person" for celebrities; without --anchor igmu uses "" (the empty
prompt's "last word token" is then its start token, as in the official code).

Retain set. The official commands pass a CSV of concept names (data/instance.csv, style.csv, the
celebrity lists); without one the script retains the null prompt's tokens. igmu retains --preserve
when given, else the generic retain concepts (common.generic_retain_concepts: the content words of
the generic retain prompts that no target uses, e.g. square, dotted, person on the mini world); as
in the official code, a retain concept that contains a target word is dropped, and with nothing
left the null prompt's tokens 1.. are retained.

Differences from the official code, stated exactly:
  * k-means of the null prompt's tokens: scipy.cluster.vq.kmeans2 (random initial points, 100 Lloyd
    iterations, seeded) instead of kmeans_pytorch (random initial points until the centres move less
    than 1e-4).
  * The official 'nudity' special case (all tokens instead of the last one) is not copied: igmu uses
    the last word token for every target.
  * DPA keeps the copies above the mean over all copies at once (official: per chunk of 128
    retained embeddings; the same for up to 128 retained concepts).
  * Solves in float64 (official: float32 inverses); the 4 x 4 null-prior system is pseudo-inverted
    (identical where the official inverse exists).
Several targets are averaged into T and A exactly as the official code does.
"""
from __future__ import annotations

import re
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..diffusion.arch import adapter_for
from .base import EraseRequest, Eraser, MethodConfig, register
from .common import check_request, generic_retain_concepts, last_token_rows


class SPEEDConfig(MethodConfig):
    params: Literal["V", "K", "KV"] = "V"  # official --params V
    aug_num: int = Field(10, ge=0)  # official --aug_num 10 (DPA copies per retained embedding)
    threshold: float = Field(0.1, gt=0)  # official --threshold 1e-1 (null-space eigenvalue cut)
    retain_scale: float = Field(1.0, gt=0)  # official --retain_scale 1.0
    lamb: float = Field(0.0, ge=0)  # official --lamb 0.0 (null-prompt prior as a hard constraint)
    prior_filter: bool = True  # IPF; official --disable_filter off by default
    null_clusters: int = Field(3, ge=1)  # official kmeans(num_clusters=3) of the null prompt's tokens
    seed: int = 0  # official --seed 0


def retained_concepts(req: EraseRequest) -> list[str]:
    """--preserve, else the generic retain concepts; minus those naming a target (official regex filter)."""
    pool = list(req.preserve) if req.preserve else generic_retain_concepts(req.targets)
    words = [re.compile(r"\b" + re.escape(t.lower()) + r"\b") for t in req.targets]
    return [p for p in dict.fromkeys(pool) if p and not any(w.search(p.lower()) for w in words)]


def null_prior(null: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """K2 (d x (k+1)): the null prompt's start-token row and the k-means centres of its other rows."""
    from scipy.cluster.vq import kmeans2

    rest = null[1:].double().numpy()
    k = min(k, len(rest))
    centres, _ = kmeans2(rest, k, iter=100, minit="points", seed=np.random.default_rng(seed))
    return torch.cat([null[:1].double(), torch.from_numpy(centres)]).T


def speed_delta(W: torch.Tensor, T: torch.Tensor, A: torch.Tensor, retain: torch.Tensor, K2: torch.Tensor,
                cfg: SPEEDConfig, gen: torch.Generator) -> torch.Tensor:
    """Delta W of one projection (official edit_model, baseline SPEED); all float64."""
    d = W.shape[1]
    eye = torch.eye(d, dtype=torch.float64)
    erase_weight = W @ (A - T) @ torch.linalg.inv(eye + T)
    v_min = torch.linalg.svd(W, full_matrices=False).Vh[-1:]  # right singular vector of the smallest sigma
    P_min = v_min.T @ v_min
    rows = retain
    if cfg.aug_num > 0 and cfg.prior_filter:  # IPF: keep the retained embeddings the erasure disturbs most
        norms = (rows @ erase_weight.T).norm(dim=1)
        rows = rows[norms > norms.mean()]
    if cfg.aug_num > 0 and len(rows):  # DPA: perturb along the direction W barely reads
        noise = torch.randn((cfg.aug_num, *rows.shape), generator=gen, dtype=torch.float64)
        copies = (rows.unsqueeze(0) + noise @ P_min).reshape(-1, d)
        norms = (copies @ erase_weight.T).norm(dim=1)
        rows = torch.cat([rows, copies[norms > norms.mean()]])
    cov = rows.T @ rows / max(len(rows), 1)
    U, S, _ = torch.linalg.svd(cov)
    U0 = U[:, S < cfg.threshold]
    P = U0 @ U0.T  # projector onto the retain set's (near) null space
    M = torch.linalg.inv(T @ P + cfg.retain_scale * eye)
    inner = K2.T @ P @ M @ K2 + cfg.lamb * torch.eye(K2.shape[1], dtype=torch.float64)
    return W @ (A - T) @ P @ (eye - M @ K2 @ torch.linalg.pinv(inner) @ K2.T @ P) @ M


@register
class SPEED(Eraser):
    name = "speed"
    summary = ("closed-form edit of cross-attention values in the null space of the retained concepts "
               "(prior filtering and augmentation, null-prompt prior kept)")
    changes = "UNet cross-attention to_v weights (to_k with params=K/KV)"
    source = ("Li et al., SPEED: Scalable, Precise, and Efficient Concept Erasure for Diffusion Models, 2025; "
              "Ouxiang-Li/SPEED")
    multi_concept = True
    Config = SPEEDConfig
    strength = {"retain_scale": "down"}

    def check(self, pipe, req: EraseRequest, cfg):
        check_request(pipe, req)
        adapter_for(pipe).kv_projections()

    @torch.no_grad()
    def erase(self, pipe, req: EraseRequest, cfg: SPEEDConfig) -> dict:
        a = adapter_for(pipe)
        anchor = req.anchor.strip() if req.anchor and req.anchor.strip() else ""  # README: "" for instances
        hs, mask = a.encode(list(req.targets) + [anchor] + [""])
        hs = a.text_rows(hs).double().cpu()
        rows = last_token_rows(hs, mask)
        c, anc = rows[:len(req.targets)], rows[len(req.targets)]
        T = torch.stack([ci[:, None] @ ci[None] for ci in c]).mean(0)  # mean_i c_i c_i^T
        A = torch.stack([anc[:, None] @ ci[None] for ci in c]).mean(0)  # mean_i a_i c_i^T
        K2 = null_prior(hs[-1], cfg.null_clusters, cfg.seed)
        names = retained_concepts(req)
        if names:
            r_hs, r_mask = a.encode(names)
            retain = last_token_rows(a.text_rows(r_hs).double().cpu(), r_mask)
        else:  # the official default retain set: the null prompt's tokens
            retain = hs[-1, 1:]
        gen = torch.Generator().manual_seed(cfg.seed)
        retain = retain[torch.randperm(len(retain), generator=gen)]  # official shuffle
        kv = a.kv_projections()
        layers = [(p.value, p.v) for p in kv] if cfg.params in ("V", "KV") else []
        layers += [(p.key, p.k) for p in kv] if cfg.params in ("K", "KV") else []
        advance = self.progress(len(layers))
        changed = {}
        for name, lin in layers:
            W = lin.weight.detach().double().cpu()
            lin.weight.copy_((W + speed_delta(W, T, A, retain, K2, cfg, gen)).to(lin.weight.dtype))
            changed[f"unet.{name}.weight"] = lin.weight.detach().cpu().clone()
            advance(1)
        return changed
