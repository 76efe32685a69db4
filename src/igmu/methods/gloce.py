"""GLoCE: Localized Concept Erasure for Text-to-Image Diffusion Models Using Training-Free Gated Low-Rank
Adaptation (Lee, Lim, Chun; CVPR 2025, arXiv 2503.12356). Official code: Hyun1A/GLoCE
(update/update_gloce.py, src/models/gloce.py, src/engine/gloce_register_buffer.py, shell_scripts/).

Training-free: a gated low-rank module after the output projection of every cross-attention layer
(attn2.to_out.0, "unet_ca_out"), determined from the model's own features during a few generations.
For each token x (a D-dim image feature) of such a layer:

    gate       s(x) = sigmoid(k (sum_r (g_r . (x - mu_g) / ||x - mu_g||)^2 - x_c))
    update     u(x) = mu_s + V_s^T V_s (I - V_t^T V_t) (x - mu_t)
    output     (1 - s(x)) x + s(x) eta u(x)

(GLoCELayerOutProp.forward). From the features of images generated for each concept (its prompt, seeds
0 .. n_gen-1, the conditional branch, forward calls st_timestep < t <= end_timestep, the spatial map
and its 2x2, 4x4, 8x8 average poolings):

  * mu_s, V_s: mean and top degen_rank principal directions of the surrogate concept's features;
  * mu_t, V_t: mean and top update_rank principal directions of the target's features;
  * mu_g: mean of the gate reference concept's features; g_r: the top gate_rank eigenvectors of
    Cov_t + (mu_t - mu_g)^T (mu_t - mu_g), where the target differs from the reference;
  * the gate's centre and slope: per forward, the largest gate score over the map's tokens (full
    resolution) for the anchor concepts (the n_anchor concepts most similar to the target); x_c = mean +
    thresh * std of those maxima, k = log(0.99 / 0.01) / (0.001 thresh), a near step at x_c.

While sampling, the module acts from the module's forward call st_timestep + 1 on (generate_by_gloce.py
passes st_step = --st_timestep), on both classifier-free-guidance branches. Several targets: one module
set per target; the gate with the largest value chooses (SimpleSelectorOutProp, n_concepts).

Defaults: the official celebrity recipe (shell_scripts/celebs/update_gloce.sh): gate_rank 1,
update_rank 16, degen_rank 2, thresh 2.5, st_timestep 10, end_timestep 20, n_gen 3, 3 anchor concepts
chosen among the surround list by the similarity of their first n_tokens = 8 token embeddings; eta 1
(celebs/generate_by_gloce.sh ETA_LIST); the buffer generations use 50 sampler steps at guidance 7.5
(train_util.embedding2img). The artist recipe is update_rank 1, degen_rank 1, st_timestep 0,
end_timestep 50; the explicit recipe thresh 1.5, n_gen 8.

Concepts in igmu. Target prompts are the targets as given (the explicit recipe's template "{}"; the
celebrity and artist recipes use "A face of {}" / "An image in the style of {}": pass such prompts as
--target). The surrogate and the gate reference are --anchor, else the empty prompt (the official
artist and explicit configs use the target's neutral concept for both: "real photograph", "a person in
modest clothing"). The surround list the anchors are picked from is --preserve, else the generic retain
concepts (common.generic_retain_concepts).

Differences from the official code, stated exactly:
  * The sampler for the buffer images is the pipeline's own (official: LMS), and all of one concept's
    generations run as one batch.
  * The GLoCE module is not a weight change: the artifact is an inference-time one (its parameters are in
    the sampling spec), applied by a forward hook on each attn2.to_out.0 while sampling.
  * Average pooling stops when the map is smaller than 2 x 2 (the official code assumes SD's 64 x 64 latent,
    whose smallest cross-attention map, 8 x 8, pools to 1 x 1).
  * The celebrity recipe's surrogates (the 3 least similar celebrities) are not used: the surrogate is the
    anchor as in the artist and explicit recipes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from ..diffusion.arch import adapter_for
from ..diffusion.attention import attention_grid
from ..diffusion.sampling import pipeline_images, sample_latents
from ..errors import UserError
from .base import EraseRequest, Eraser, MethodConfig, register
from .common import anchor_text, check_request, generic_retain_concepts


class GLoCEConfig(MethodConfig):
    gate_rank: int = Field(1, ge=1)  # official update_gloce.sh GATE_RANK_LIST ("1")
    update_rank: int = Field(16, ge=1)  # official celebs/update_gloce.sh UPDATE_RANK_LIST ("16")
    degen_rank: int = Field(2, ge=1)  # official celebs/update_gloce.sh DEGEN_RANK=2
    thresh: float = Field(2.5, gt=0)  # official celebs/update_gloce.sh THRESH=2.5
    st_timestep: int = Field(10, ge=0)  # official celebs ST_STACK=10 (buffer window start, forward calls)
    end_timestep: int = Field(20, ge=1)  # official celebs END_STACK=20
    n_gen: int = Field(3, ge=1)  # official celebs N_GEN=3 (images per concept)
    n_anchor: int = Field(3, ge=1)  # official --n_anchor_concepts 3
    n_tokens: int = Field(8, ge=1)  # official N_TOKENS=8 (tokens compared to pick the anchors)
    eta: float = Field(1.0, ge=0)  # official GLoCELayerOutProp.eta = 1.0
    sample_steps: int = Field(50, ge=2)  # official embedding2img ddim_steps=50
    guidance_scale: float = Field(7.5, ge=0)  # official embedding2img guidance_scale=7.5
    avg_depth: int = Field(4, ge=1)  # official register_sum_buffer_avg_spatial avg_depth=4


def out_projections(pipe) -> list[tuple[str, torch.nn.Module]]:
    """(name, Linear) of every cross-attention output projection (attn2.to_out.0, "unet_ca_out")."""
    return [(f"{n}.to_out.0", attn.to_out[0]) for n, attn in adapter_for(pipe).cross_attentions()]


def pick_anchors(pipe, target: str, pool: list[str], n: int, n_tokens: int) -> list[str]:
    """The n pool concepts whose first n_tokens token embeddings are most similar (mean cosine) to the
    target's (official prepare_text_embedding_token); concepts naming the target are left out."""
    cands = [c for c in pool if target.lower() not in c.lower()]
    if not cands:
        return []
    a = adapter_for(pipe)
    hs = F.normalize(a.text_rows(a.encode([target] + cands)[0]).float(), dim=-1)[:, 1:1 + n_tokens]
    sim = (hs[1:] * hs[:1]).sum(-1).mean(-1)
    order = sim.argsort().tolist()
    return [cands[i] for i in order[-n:]]


def pooled_tokens(x: torch.Tensor, size: tuple[int, int], depth: int) -> torch.Tensor:
    """Rows of x (B x T x D) and of its 2x2-average-pooled maps, depth levels in all (official avg_depth)."""
    B, T, D = x.shape
    h, w = attention_grid(T, size)
    grid = x.transpose(1, 2).reshape(B, D, h, w)
    rows = [x.reshape(-1, D)]
    for _ in range(depth - 1):
        if min(grid.shape[-2:]) < 2:
            break
        grid = F.avg_pool2d(grid, 2, 2)
        rows.append(grid.flatten(2).transpose(1, 2).reshape(-1, D))
    return torch.cat(rows)


class _Buffers:
    """Forward hooks on the attn2.to_out.0 layers that accumulate, per layer, the conditional branch's
    features in the window st < t <= end of forward calls: sums for mean/covariance (pooled=True), or the
    per-forward maximum gate score over the map's tokens (score=fn)."""

    def __init__(self, pipe, layers, cfg: GLoCEConfig, score=None):
        self.size, self.cfg, self.score = adapter_for(pipe).sample_size, cfg, score
        self.sum = {n: 0 for n, _ in layers}
        self.sq = {n: 0 for n, _ in layers}
        self.count = {n: 0 for n, _ in layers}
        self.maxima = {n: [] for n, _ in layers}
        self.t = {n: 0 for n, _ in layers}
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in layers]

    def _hook(self, name):
        def hook(_m, _inp, out):
            self.t[name] += 1
            if not self.cfg.st_timestep < self.t[name] <= self.cfg.end_timestep:
                return
            cond = out[out.shape[0] // 2:].detach().double()
            if self.score is None:
                rows = pooled_tokens(cond, self.size, self.cfg.avg_depth)
                self.sum[name] = self.sum[name] + rows.sum(0)
                self.sq[name] = self.sq[name] + rows.T @ rows
                self.count[name] += len(rows)
            else:
                self.maxima[name] += self.score(name, cond).amax(-1).tolist()  # one maximum per image
        return hook

    def close(self):
        for h in self.handles:
            h.remove()

    def mean_cov(self, name):
        mu = self.sum[name] / self.count[name]
        return mu, self.sq[name] / self.count[name] - mu[:, None] @ mu[None]


@torch.no_grad()
def _generate(pipe, prompts: list[str], cfg: GLoCEConfig, buffers: _Buffers):
    """n_gen images per prompt (seeds 0 .. n_gen-1), one sampling run per seed: every prompt's image of seed
    s starts from the same noise (official: torch.randn(...).repeat(batch_size) per seed)."""
    a = adapter_for(pipe)
    cond = a.encode(prompts)[0]
    null = a.encode([""])[0].expand(len(prompts), -1, -1)
    for seed in range(cfg.n_gen):
        noise = torch.randn(a.latent_shape(1), generator=torch.Generator().manual_seed(seed)).expand(
            len(prompts), -1, -1, -1)
        for n in buffers.t:
            buffers.t[n] = 0
        sample_latents(a, None, cond, null, cfg.sample_steps, cfg.guidance_scale, noise=noise)


def _top(cov: torch.Tensor, k: int) -> torch.Tensor:
    """The top k principal directions (rows) of a covariance (official svd(cov).Vh[:k])."""
    return torch.linalg.svd(cov, full_matrices=False).Vh[:k]


def gate_score(x: torch.Tensor, mean: torch.Tensor, vecs: torch.Tensor) -> torch.Tensor:
    """sum_r (g_r . (x - mu_g) / ||x - mu_g||)^2 for each token of x (... x D); vecs: r x D."""
    diff = F.normalize(x - mean, dim=-1)
    return ((diff @ vecs.T) ** 2).sum(-1)


def _check_gate_samples(cfg: GLoCEConfig, n_anchors: int):
    """The gate's centre is mean + thresh * std of the anchors' per-forward maxima: a standard deviation needs
    at least two of them (n_anchors x n_gen x the forward calls in the window)."""
    window = min(cfg.end_timestep, cfg.sample_steps) - cfg.st_timestep
    if n_anchors * cfg.n_gen * window < 2:
        raise UserError(f"GLoCE's gate needs at least 2 anchor samples to set its centre, and {n_anchors} anchor "
                        f"concept(s) x n_gen {cfg.n_gen} x {window} step(s) in the window give "
                        f"{n_anchors * cfg.n_gen * window}: raise n_gen, n_anchor or end_timestep")


def gloce_module(pipe, target: str, surrogate: str, reference: str, anchors: list[str], cfg: GLoCEConfig) -> dict:
    """The GLoCE parameters of every attn2.to_out.0 layer for one target (float64 tensors)."""
    layers = out_projections(pipe)
    prompts = list(dict.fromkeys([surrogate, reference, target]))
    stats = {}
    for p in prompts:  # sums of the surrogate, the gate reference and the target
        buf = _Buffers(pipe, layers, cfg)
        try:
            _generate(pipe, [p], cfg, buf)
        finally:
            buf.close()
        stats[p] = {n: buf.mean_cov(n) for n, _ in layers}
    params = {}
    for n, _ in layers:
        mu_s, cov_s = stats[surrogate][n]
        mu_t, cov_t = stats[target][n]
        mu_g, _ = stats[reference][n]
        V_s, V_t = _top(cov_s, cfg.degen_rank), _top(cov_t, cfg.update_rank)
        rel = (mu_t - mu_g)[:, None]
        g = _top(cov_t + rel @ rel.T, cfg.gate_rank)
        D = len(mu_s)
        params[n] = {"gate": g, "gate_mean": mu_g, "degen": V_s.T,
                     "update": (V_s @ (torch.eye(D, dtype=torch.float64) - V_t.T @ V_t)).T, "bias": mu_s,
                     "debias": mu_t}
    # the gate's centre: the anchors' per-forward maxima of the gate score (the official code also collects the
    # target's, but only prints them)
    buf = _Buffers(pipe, layers, cfg, score=lambda n, x: gate_score(x, params[n]["gate_mean"], params[n]["gate"]))
    try:
        _generate(pipe, anchors, cfg, buf)
    finally:
        buf.close()
    slope = math.log(1 / (1 / 0.99 - 1)) / (0.001 * cfg.thresh)  # official C_right / tol2
    for n, _ in layers:
        ref = torch.tensor(buf.maxima[n], dtype=torch.float64)
        params[n]["center"] = float(ref.mean() + cfg.thresh * ref.std())
        params[n]["slope"] = slope
    return params


def gloce_output(x: torch.Tensor, layer: dict, eta: float) -> torch.Tensor:
    """The GLoCE module's output for a to_out.0 output x (B x T x D); layer holds one entry per concept."""
    xd = x.double()
    scales, mods = [], []
    for c in layer:
        s = torch.sigmoid(c["slope"] * (gate_score(xd, c["gate_mean"], c["gate"]) - c["center"]))
        mod = c["bias"] + ((xd - c["debias"]) @ c["update"]) @ c["degen"].T
        scales.append(s)
        mods.append(eta * mod)
    scale, idx = torch.stack(scales).max(0)  # the concept whose gate is the most open (official select_idx)
    mod = torch.stack(mods).gather(0, idx[None, ..., None].expand(1, *xd.shape))[0]
    return ((1 - scale[..., None]) * xd + scale[..., None] * mod).to(x.dtype)


def _tensors(spec_layer: list[dict]) -> list[dict]:
    return [{k: (torch.tensor(v, dtype=torch.float64) if isinstance(v, list) else float(v)) for k, v in c.items()}
            for c in spec_layer]


def gloce_sample(pipe, prompts, negative, latents, steps, guidance, height, width, spec: dict):
    mods = dict(out_projections(pipe))
    missing = [n for n in spec["layers"] if n not in mods]
    if missing:
        raise UserError(f"the GLoCE artifact edits layer {missing[0]!r}, which this model does not have")
    layers = {n: _tensors(v) for n, v in spec["layers"].items()}
    calls = {n: 0 for n in layers}

    def hook(name):
        def h(_m, _inp, out):
            calls[name] += 1
            if calls[name] <= spec["st_step"]:  # official: only once t_counter > st_step
                return out
            return gloce_output(out, layers[name], spec["eta"])
        return h
    handles = [mods[n].register_forward_hook(hook(n)) for n in layers]
    try:
        return pipeline_images(pipe, prompts, negative, latents, steps, guidance, height, width)
    finally:
        for h in handles:
            h.remove()


@register
class GLoCE(Eraser):
    name = "gloce"
    summary = ("training-free gated low-rank modules after each cross-attention output: features the gate finds "
               "target-like are mapped into the surrogate's principal subspace")
    changes = "no weights; a gated module on each attn2.to_out.0 output while sampling (its parameters in the spec)"
    source = ("Lee, Lim, Chun, Localized Concept Erasure for Text-to-Image Diffusion Models Using Training-Free "
              "Gated Low-Rank Adaptation, CVPR 2025; Hyun1A/GLoCE")
    multi_concept = True
    kind = "sampling"
    sampling_type = "gloce"
    unet_passes_per_step = 2
    Config = GLoCEConfig
    strength = {"thresh": "down"}

    def check(self, pipe, req: EraseRequest, cfg: GLoCEConfig):
        check_request(pipe, req)
        out_projections(pipe)
        if cfg.end_timestep <= cfg.st_timestep:
            raise UserError(f"end_timestep ({cfg.end_timestep}) must be above st_timestep ({cfg.st_timestep})")
        if cfg.st_timestep >= cfg.sample_steps:
            raise UserError(f"st_timestep ({cfg.st_timestep}) leaves no sampler step of {cfg.sample_steps} to "
                            f"collect features from")
        _check_gate_samples(cfg, cfg.n_anchor)

    def sampling_spec(self, pipe, req: EraseRequest, cfg: GLoCEConfig) -> dict:
        """GLoCE's spec needs the model: its parameters come from the model's own features."""
        a = adapter_for(pipe)
        neutral = anchor_text(req)
        pool = list(req.preserve) if req.preserve else generic_retain_concepts(req.targets)
        per_target = []
        advance = self.progress(len(req.targets))
        for t in req.targets:
            anchors = pick_anchors(a, t, [p for p in pool if p not in req.targets], cfg.n_anchor, cfg.n_tokens)
            if not anchors:
                raise UserError(f"GLoCE sets its gate from anchor concepts and none is left for target {t!r}: "
                                f"give --preserve concepts that do not contain it")
            _check_gate_samples(cfg, len(anchors))
            per_target.append(gloce_module(a, t, neutral, neutral, anchors, cfg))
            advance(1, target=t)
        names = list(per_target[0])
        layers = {n: [{k: (v.tolist() if torch.is_tensor(v) else v) for k, v in p[n].items()} for p in per_target]
                  for n in names}
        # official generate_by_gloce.py: st_step=args.st_timestep (the module acts after that many calls)
        return {"type": self.sampling_type, "layers": layers, "eta": cfg.eta, "st_step": cfg.st_timestep}

    def sampler(self, spec: dict):
        keys = {"gate", "gate_mean", "degen", "update", "bias", "debias", "center", "slope"}
        ok = (isinstance(spec.get("layers"), dict) and spec["layers"] and isinstance(spec.get("st_step"), int)
              and isinstance(spec.get("eta"), (int, float))
              and all(isinstance(v, list) and v and all(isinstance(c, dict) and set(c) == keys for c in v)
                      for v in spec["layers"].values()))
        if not ok:
            raise UserError("artifact's GLoCE sampling spec is malformed (needs layers with gate, update and bias "
                            "parameters, eta, st_step)")

        def sample(pipe, prompts, negative, latents, steps, guidance, height, width):
            return gloce_sample(pipe, prompts, negative, latents, steps, guidance, height, width, spec)
        return sample
