"""UCE: Unified Concept Editing (Gandikota, Orgad, Belinkov, Materzynska, Bau; WACV 2024).

Closed-form edit of the cross-attention key and value projections W_k, W_v of
every attn2 in the UNet, so that the tokens of each target concept are
projected where the anchor's tokens were (eq. 7 of the paper):

    W' = (lamb W + s_e sum_i v*_i k_i^T + s_p sum_j W c_j c_j^T)(lamb I + s_e sum_i k_i k_i^T + s_p sum_j c_j c_j^T)^-1

k_i: text-encoder outputs of a target; v*_i = W a_i, the original projection
of the anchor's outputs at the same positions (the "replace" technique); c_j:
outputs of the preserved concepts. Several targets at once are several rows of
K and V. Which token rows enter, and the preserved set with its scale, follow
one of the two official scripts (rohitgandikota/unified-concept-editing):

* token_rows "to_end" (default on SD 1.x/2.x): the paper's script,
  train-scripts/train_erase.py (commit bd5fb51; also the first stage of RECE's
  own script CharlesGong12/RECE erase_methods/train_uce.py, the same code).
  k_i: the target prompt's outputs from its last word token to the end of the
  padded sequence (EOS and padding carry the concept too), aligned with the
  anchor's from its own last word token. Preserved: retain_texts = [''] +
  preserve_concepts, every token row of each, so the empty prompt is always
  preserved; preserve_scale defaults to max(0.1, 1 / len(retain_texts))
  (argparse default None, then that rule): 1.0 with no --preserve, 0.5 with
  one, 0.1 from nine on. lamb = 0.5 (passed to edit_model in __main__),
  erase_scale = 1 (argparse). Anchor ' ' (a blank prompt) when none is given.
* token_rows "last": the newer scripts, trainscripts/uce_sd_erase.py (and
  uce_flux_edit.py). Only the last word token (attention_mask.sum() - 2) of
  each target, anchor and preserved concept enters; the preserved concepts are
  exactly --preserve (no empty prompt added), at preserve_scale 1 (argparse
  default); lamb 0.5, erase_scale 1; anchor '' when none is given (its "last
  token" is then the start token; the script uses 'art' for --concept_type
  art, which igmu leaves to --anchor art). `--set token_rows=last` selects it.

`--preserve ""` is refused like every empty concept (with "to_end" the
empty prompt is preserved anyway). preserve_scale, when set,
overrides the scripts' rule; preserve_scale=0 preserves nothing (igmu's
behaviour before the official preservation was added). Common to both: edit of
to_k and to_v (with_to_k=True). Differences from the official code: the solve
is torch.linalg.solve in float64 (official: mat1 @ inverse(mat2) in float32),
the same solution; the 'tensor' technique of train_erase.py is not offered
(its default is 'replace').

Other architectures (docs/architectures.md). The edited layers are the adapter's text_projections, the
Linear layers that read the text encoders' output directly:
- SDXL: every attn2 to_k / to_v, on the concatenated embedding (768 + 1280 = 2048 wide). The official
  SDXL route is trainscripts/uce_sd_erase.py (README: "SDv1.4 and SDXL"): one row per concept, its last
  word token (attention_mask.sum() - 2), preserve_scale 1 (argparse default), anchor '' when none is given.
  Those are the SDXL defaults here (token_rows "last", preserve_scale 1).
- FLUX.1, after trainscripts/uce_flux_edit.py: the transformer has no cross-attention; the script edits
  context_embedder (T5's rows -> the context stream) with the concept's last-word T5 row, and the pooled
  projection time_text_embed.text_embedder.linear_1 with CLIP's pooled embedding; preserve_scale 1, lamb
  0.5, erase_scale 1, anchor ''. Difference: the script takes v* = module(c), the layer's output
  INCLUDING its bias, while it edits only the weight, so the edited layer maps the target to the anchor's
  output plus one extra bias; igmu uses v* = W a (this module's rule), so the edited layer's output for
  the target is exactly the anchor's. For the blank anchor '' the "last word" index is -1, the last
  (padding) T5 row, as in the script.
- SD3: no official script; igmu applies the FLUX script's edit to SD3's context_embedder (which reads the
  CLIP rows, zero-padded to T5's width, then T5's rows: the concept's last-word row of each) and its pooled
  projection (both CLIP pooled embeddings), with the same defaults.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..diffusion.arch import adapter_for
from .base import EraseRequest, Eraser, MethodConfig, register
from .common import ClosedFormEdit, check_targets, last_token_rows


class UCEConfig(MethodConfig):
    lamb: float = Field(0.5, ge=0)  # official train_erase.py __main__: edit_model(..., lamb=0.5)
    erase_scale: float = Field(1.0, gt=0)  # official argparse default --erase_scale 1
    # None: the scripts' rule: train_erase.py max(0.1, 1/len([''] + preserve)) (token_rows to_end); 1 (last)
    preserve_scale: float | None = Field(None, ge=0)
    with_to_k: bool = True  # official edit_model default: edit keys as well as values
    # which token rows of a concept enter: "to_end" (train_erase.py: last word token to the end) or "last"
    # (uce_sd_erase.py / uce_flux_edit.py: the last word token only, per text encoder)
    token_rows: Literal["to_end", "last"] = "to_end"


def _concept_rows(hs: torch.Tensor, mask: torch.Tensor, i_src: int, i_dst: int):
    """Aligned token rows of two prompts, from each one's last word token on (official slicing)."""
    last_src = int(mask[i_src].sum()) - 2
    last_dst = int(mask[i_dst].sum()) - 2
    far = max(last_src, last_dst)
    L = hs.shape[1]
    src = hs[i_src, last_src:L - (far - last_src)]
    dst = hs[i_dst, last_dst:L - (far - last_dst)]
    return src, dst


def retain_texts(req: EraseRequest, cfg: UCEConfig) -> list[str]:
    """The preserved prompts: [''] + --preserve (train_erase.py, token_rows to_end) or --preserve (last)."""
    keep = list(dict.fromkeys(p.strip() for p in req.preserve))
    if cfg.token_rows == "to_end":
        return [""] + [p for p in keep if p]
    return keep


def preserve_scale(cfg: UCEConfig, n_retain: int) -> float:
    """The preservation weight: the option, else the scripts' rule."""
    if cfg.preserve_scale is not None:
        return cfg.preserve_scale
    return max(0.1, 1 / n_retain) if cfg.token_rows == "to_end" else 1.0


@register
class UCE(Eraser):
    name = "uce"
    summary = "closed-form edit of cross-attention K/V so target tokens map onto the anchor's, the empty prompt kept"
    changes = ("UNet cross-attention to_k and to_v weights; on SD3/FLUX context_embedder and the pooled-text "
               "projection")
    source = ("Gandikota et al., Unified Concept Editing in Diffusion Models, WACV 2024; "
              "rohitgandikota/unified-concept-editing")
    multi_concept = True
    Config = UCEConfig
    architectures = {"sd": None, "sdxl": None, "sd3": None, "flux": None}
    _official = {"token_rows": "last", "preserve_scale": 1.0}  # uce_sd_erase.py (SDXL) / uce_flux_edit.py
    family_defaults = {"sdxl": _official, "sd3": _official, "flux": _official}
    strength = {"erase_scale": "up"}

    def check(self, pipe, req: EraseRequest, cfg):
        a = adapter_for(pipe)
        check_targets(a, req)
        for p in req.preserve:
            if p.strip():  # "" is the empty prompt, which the official script preserves
                a.check_prompt(p, "preserved concept")
        a.text_projections()

    @torch.no_grad()
    def erase(self, pipe, req: EraseRequest, cfg: UCEConfig) -> dict:
        a = adapter_for(pipe)
        blank = " " if cfg.token_rows == "to_end" else ""  # each script's default guide concept
        anchor = req.anchor if req.anchor and req.anchor.strip() else blank
        cond, mask = a.encode(list(req.targets) + [anchor])
        hs = a.text_rows(cond)
        n = len(req.targets)
        if cfg.token_rows == "to_end":
            pairs = [_concept_rows(hs, mask, i, n) for i in range(n)]
            K = torch.cat([k for k, _ in pairs])  # target token rows
            A = torch.cat([v for _, v in pairs])  # anchor token rows, aligned
        else:
            rows = last_token_rows(hs, mask, a.token_segments()).reshape(n + 1, -1, hs.shape[-1])
            K, A = rows[:n].reshape(-1, hs.shape[-1]), rows[n:].expand(n, -1, -1).reshape(-1, hs.shape[-1])
        keep = keep_pooled = None
        keep_texts = retain_texts(req, cfg)
        if keep_texts:
            k_cond, k_mask = a.encode(keep_texts)
            k_hs = a.text_rows(k_cond)
            keep = (k_hs.reshape(-1, hs.shape[-1]) if cfg.token_rows == "to_end"
                    else last_token_rows(k_hs, k_mask, a.token_segments()))
            keep_pooled = a.pooled(k_cond)
        s_p = preserve_scale(cfg, len(keep_texts)) if keep_texts else 0.0
        pooled = a.pooled(cond)  # SDXL's pooled embedding feeds no text projection; SD3's and FLUX's do
        changed, solvers = {}, {}
        for p in a.text_projections():
            if p.role == "key" and not cfg.with_to_k:
                continue
            X, Y, C = (K, A, keep) if p.reads == "tokens" else (pooled[:n], pooled[n:].expand(n, -1), keep_pooled)
            if p.reads not in solvers:  # every layer reading the same rows shares one factorisation
                solvers[p.reads] = ClosedFormEdit(X.float().cpu(), None if C is None else C.float().cpu(),
                                                  cfg.lamb, cfg.erase_scale, s_p)
            W = p.linear.weight.detach().float().cpu()
            V = Y.float().cpu() @ W.T  # v* = W a
            W_new = solvers[p.reads](W, V)
            p.linear.weight.copy_(W_new.to(p.linear.weight.dtype))
            changed[f"{a.component}.{p.name}.weight"] = W_new.clone()  # the float32 solution, whatever the model's dtype
        return changed
