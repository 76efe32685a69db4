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
"""
from __future__ import annotations

import torch
from pydantic import Field

from ..diffusion.arch import adapter_for
from .base import EraseRequest, Eraser, MethodConfig, register
from .common import check_targets, closed_form_edit


class UCEConfig(MethodConfig):
    lamb: float = Field(0.5, ge=0)  # official train_erase.py __main__: edit_model(..., lamb=0.5)
    erase_scale: float = Field(1.0, gt=0)  # official argparse default --erase_scale 1
    preserve_scale: float = Field(0.1, ge=0)  # official argparse default --preserve_scale 0.1
    with_to_k: bool = True  # official edit_model default: edit keys as well as values


def _concept_rows(hs: torch.Tensor, mask: torch.Tensor, i_src: int, i_dst: int):
    """Aligned token rows of two prompts, from each one's last word token on (official slicing)."""
    last_src = int(mask[i_src].sum()) - 2
    last_dst = int(mask[i_dst].sum()) - 2
    far = max(last_src, last_dst)
    L = hs.shape[1]
    src = hs[i_src, last_src:L - (far - last_src)]
    dst = hs[i_dst, last_dst:L - (far - last_dst)]
    return src, dst


@register
class UCE(Eraser):
    name = "uce"
    summary = "closed-form edit of cross-attention K/V so target tokens map onto the anchor's"
    changes = "UNet cross-attention to_k and to_v weights"
    source = "Gandikota et al., Unified Concept Editing in Diffusion Models, WACV 2024; rohitgandikota/unified-concept-editing"
    multi_concept = True
    Config = UCEConfig

    def check(self, pipe, req: EraseRequest, cfg):
        a = adapter_for(pipe)
        check_targets(a, req)
        for p in req.preserve:
            a.check_prompt(p, "preserved concept")
        a.kv_projections()

    @torch.no_grad()
    def erase(self, pipe, req: EraseRequest, cfg: UCEConfig) -> dict:
        a = adapter_for(pipe)
        anchor = req.anchor if req.anchor and req.anchor.strip() else " "
        hs, mask = a.encode(list(req.targets) + [anchor])
        hs = a.text_rows(hs)
        pairs = [_concept_rows(hs, mask, i, len(req.targets)) for i in range(len(req.targets))]
        K = torch.cat([k for k, _ in pairs])  # target token rows
        A = torch.cat([v for _, v in pairs])  # anchor token rows, aligned
        keep = a.text_rows(a.encode(list(req.preserve))[0]).reshape(-1, hs.shape[-1]) if req.preserve else None
        changed = {}
        for kv in a.kv_projections():
            for name, lin in ([(kv.value, kv.v), (kv.key, kv.k)] if cfg.with_to_k else [(kv.value, kv.v)]):
                W = lin.weight.detach().float().cpu()
                V = A.float().cpu() @ W.T  # v* = W a
                W_new = closed_form_edit(W, K.float().cpu(), V, None if keep is None else keep.float().cpu(),
                                         cfg.lamb, cfg.erase_scale, cfg.preserve_scale)
                lin.weight.copy_(W_new.to(lin.weight.dtype))
                changed[f"unet.{name}.weight"] = lin.weight.detach().cpu().clone()
        return changed
