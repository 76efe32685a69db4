"""UCE: Unified Concept Editing (Gandikota, Orgad, Belinkov, Materzynska, Bau; WACV 2024).

Closed-form edit of the cross-attention key and value projections W_k, W_v of
every attn2 in the UNet, so that the tokens of each target concept are
projected where the anchor's tokens were (eq. 7 of the paper):

    W' = (lamb W + s_e sum_i v*_i k_i^T + s_p sum_j W c_j c_j^T)(lamb I + s_e sum_i k_i k_i^T + s_p sum_j c_j c_j^T)^-1

k_i: text-encoder outputs of the target prompt from its last word token to the
end (EOS and padding tokens carry the concept too); v*_i = W a_i for the same
positions of the anchor prompt (the "replace" technique of the official code);
c_j: all token outputs of each preserved concept. Several targets at once are
several rows of K and V.

Defaults follow the official code (rohitgandikota/unified-concept-editing,
train-scripts/train_erase.py): lamb = 0.5 (passed to edit_model in __main__),
erase_scale = 1.0 and preserve_scale = 0.1 (argparse defaults), edit of both
to_k and to_v (with_to_k=True), anchor ' ' (a blank prompt) when none is
given. Differences: none in the update; the official script computes the
values with the already-edited earlier matrices only for the 'tensor'
technique, which igmu does not offer.

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
from .common import ClosedFormEdit, check_targets


class UCEConfig(MethodConfig):
    lamb: float = Field(0.5, ge=0)  # official train_erase.py __main__: edit_model(..., lamb=0.5)
    erase_scale: float = Field(1.0, gt=0)  # official argparse default --erase_scale 1
    preserve_scale: float = Field(0.1, ge=0)  # official argparse default --preserve_scale 0.1
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


def _last_rows(hs: torch.Tensor, mask: torch.Tensor, segments: list[tuple[int, int]]) -> torch.Tensor:
    """Each prompt's last-word-token row in every text encoder's run of rows (index mask.sum() - 2 within the
    run, as the official scripts; -1, the run's last row, for a prompt of no word under a tokenizer without a
    start token). N x len(segments) x D, flattened to (N * len(segments)) x D."""
    out = []
    for i in range(len(hs)):
        for start, length in segments:
            k = int(mask[i, start:start + length].sum()) - 2
            out.append(hs[i, start + k % length])
    return torch.stack(out)


@register
class UCE(Eraser):
    name = "uce"
    summary = "closed-form edit of cross-attention K/V so target tokens map onto the anchor's"
    changes = ("UNet cross-attention to_k and to_v weights; on SD3/FLUX context_embedder and the pooled-text "
               "projection")
    source = "Gandikota et al., Unified Concept Editing in Diffusion Models, WACV 2024; rohitgandikota/unified-concept-editing"
    multi_concept = True
    Config = UCEConfig
    architectures = {"sd": None, "sdxl": None, "sd3": None, "flux": None}
    _official = {"token_rows": "last", "preserve_scale": 1.0}  # uce_sd_erase.py (SDXL) / uce_flux_edit.py
    family_defaults = {"sdxl": _official, "sd3": _official, "flux": _official}

    def check(self, pipe, req: EraseRequest, cfg):
        a = adapter_for(pipe)
        check_targets(a, req)
        for p in req.preserve:
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
            rows = _last_rows(hs, mask, a.token_segments()).reshape(n + 1, -1, hs.shape[-1])
            K, A = rows[:n].reshape(-1, hs.shape[-1]), rows[n:].expand(n, -1, -1).reshape(-1, hs.shape[-1])
        keep = keep_pooled = None
        if req.preserve:
            k_cond, k_mask = a.encode(list(req.preserve))
            k_hs = a.text_rows(k_cond)
            keep = (k_hs.reshape(-1, hs.shape[-1]) if cfg.token_rows == "to_end"
                    else _last_rows(k_hs, k_mask, a.token_segments()))
            keep_pooled = a.pooled(k_cond)
        pooled = a.pooled(cond)  # SDXL's pooled embedding feeds no text projection; SD3's and FLUX's do
        changed, solvers = {}, {}
        for p in a.text_projections():
            if p.role == "key" and not cfg.with_to_k:
                continue
            X, Y, C = (K, A, keep) if p.reads == "tokens" else (pooled[:n], pooled[n:].expand(n, -1), keep_pooled)
            if p.reads not in solvers:  # every layer reading the same rows shares one factorisation
                solvers[p.reads] = ClosedFormEdit(X.float().cpu(), None if C is None else C.float().cpu(),
                                                  cfg.lamb, cfg.erase_scale, cfg.preserve_scale)
            W = p.linear.weight.detach().float().cpu()
            V = Y.float().cpu() @ W.T  # v* = W a
            W_new = solvers[p.reads](W, V)
            p.linear.weight.copy_(W_new.to(p.linear.weight.dtype))
            changed[f"{a.component}.{p.name}.weight"] = W_new.clone()  # the float32 solution, whatever the model's dtype
        return changed
