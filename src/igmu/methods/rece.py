"""RECE: Reliable and Efficient Concept Erasure (Gong, Chen, Wei, Chen, Jiang; ECCV 2024).

RECE starts from UCE's closed-form edit of the cross-attention key and value
projections (igmu's `uce.py`, run unchanged as the first stage) and then, for a
few epochs, alternates two closed forms:

1. Find the embedding the *edited* model still turns into the concept. With W_l
   the original and W'_l the current (edited) matrices of every attn2 to_k and
   to_v (l runs over both kinds of every layer) and c the text-encoder output of
   the target prompt, RECE solves, for each token position independently,

       e* = argmin_e  sum_l ||W'_l e - W_l c||^2 + lambda ||e||^2
          = (sum_l W'_l^T W'_l + lambda I)^-1 (sum_l W'_l^T W_l) c

   (the paper's closed-form new embedding with the "regularise to zero" term,
   official utils/embedding_calculation/close_form_emb.py `close_form_emb_regzero`;
   lambda = regular_scale). All token positions of the padded prompt are used,
   start and end-of-text tokens included, as in the official code (its slicing
   to the last word token is commented out).

2. Erase e* with UCE's closed form on the current matrices W' (official
   erase_methods/uce.py `edit_model_adversarial`, technique "replace"):

       W'' = argmin_W  s_e sum_i ||W e*_i - W' a_i||^2 + s_p sum_j ||W p_j - W' p_j||^2 + lamb ||W - W'||_F^2

   e*_i: the rows of e* (every token position), a_i: the same positions of the
   anchor prompt (the official `--guided_concepts`, default ' ': the blank
   prompt, as UCE's default); p_j: every token of the retain prompts, which the
   official train_object.py builds as [''] + preserve_concepts (train.py for
   nudity: [' '], the same tokens). This is `closed_form_edit` with W = W'.

Several targets (the official `--concepts a,b,...`, e.g. the eleven I2P
concepts) are several rows e*_i of one edit per epoch, each target's e* derived
from its own prompt.

Defaults (official code CharlesGong12/RECE, README "Notes" and scripts/):
  * first stage: igmu's UCE at its own defaults (the paper's train_erase.py
    rows: lamb 0.5, erase 1, keys and values, the empty prompt preserved at
    max(0.1, 1 / len([''] + preserved)), i.e. 1.0 without --preserve), with the
    request's anchor and preserved concepts. The official scripts start from a
    UCE checkpoint made with RECE's own copy of UCE's script
    (erase_methods/train_uce.py: the same rule, rounded to 3 decimals); the
    README's checkpoint "erased-nudity-towards_uncond-preserve_false-sd_1_4-
    method_replace-1-1.0.pt" is erase scale 1, preserve scale 1.0.
  * lamb 0.1, erase_scale 1, preserve_scale 0.1 (train.py / train_object.py
    argparse defaults; README: "lambda_1 = 0.1 and lambda_2 = 0.1").
  * regular_scale (lambda) and epochs: the README lists 1e-1 with 3 epochs for
    nudity, 2 epochs for unsafe concepts, 1e-3 with 1 epoch for artistic styles
    and "difficult" objects, 1e-1 with 1 epoch for "easy" objects. igmu uses one
    default for every kind of target: lambda 1e-1 (train.py's argparse default,
    the nudity and "easy objects" setting) and 1 epoch (train_object.py's
    default; styles and all objects). See "Mini model".
  * keys and values both (close_form_emb(..., with_to_k=True)).

Differences from the official code, stated exactly:
  * No validation-based model selection. The official scripts generate images
    after every epoch, score them (NudeNet, Q16 or a classifier) and keep the
    epoch with the lowest detection rate (train_object.py also stops once the
    target's accuracy is 0). igmu has no detector at erase time for an arbitrary
    model, so it runs exactly `epochs` epochs and returns the last model.
  * The edit is solved with torch.linalg.solve in float64 (official:
    mat1 @ torch.inverse(mat2) in float32); same solution, better conditioned.
  * An empty `--preserve ""` is refused (every empty concept is); the empty
    prompt is in the retain prompts [''] + preserve_concepts already.
  * Nothing else: no step is scaled for the mini model (closed forms cost
    milliseconds).

Other architectures (no official RECE code exists for them; docs/architectures.md): both stages act on the
layers UCE edits there (adapter.text_projections). SDXL: attn2 to_k / to_v on the 2048-wide concatenated
embedding, exactly as above. SD3 / FLUX: the first stage is igmu's UCE on that family (its official FLUX
defaults: last word token, context_embedder and the pooled projection); then, per kind of input, the
closed-form attack and edit above: e* over all token rows of the prompt for context_embedder (one layer:
e* = (W'^T W' + lambda I)^-1 W'^T W c), and e* of the pooled embedding for the pooled projection.

Mini model (measured before the first stage preserved the empty prompt, i.e. with
uce_preserve_scale=0; the table in docs/methods.md has the current figures;
24 forget and 24 retain images per target, igmu.world.erasure_checks;
forget = share of forget images still showing the target, retain = share of
retain images drawn as asked; the original model: forget 1.00, retain ~1.00; UCE
alone in the same run: circle 0.50 / 0.71, striped 0.33 / 0.75, hex mark 0.00 /
0.75). At the defaults (lambda 0.1, 1 epoch) RECE erases more than UCE and costs
more retain accuracy: circle 0.12 / 0.42, striped 0.00 / 0.71, hex mark 0.00 /
0.50 (figure kept 0.38). lambda 1e-3 (the README's styles setting): 0.08 / 0.42,
0.08 / 0.63, 0.17 / 0.08: with so weak a ridge the derived embedding is 3.7 times
the norm of a real prompt embedding (0.66 times at lambda 0.1), off the text
encoder's range, and erasing it disturbs every prompt. 3 epochs at lambda 0.1
(the nudity setting): 0.04 / 0.29, 0.33 / 0.33, 0.00 / 0.08 (figure kept 0.00).
Hence one default for every target, 0.1 and 1 epoch; nothing is scaled.
"""
from __future__ import annotations

import torch
from pydantic import Field

from ..diffusion.arch import adapter_for
from .base import EraseRequest, Eraser, MethodConfig, register
from .common import ClosedFormEdit
from .uce import UCE, UCEConfig


class RECEConfig(MethodConfig):
    epochs: int = Field(1, ge=1)  # official README: styles and objects 1 epoch (nudity 3); train_object.py --epochs 1
    regular_scale: float = Field(0.1, gt=0)  # official train.py --regular_scale 1e-1 (README: nudity, easy objects)
    lamb: float = Field(0.1, ge=0)  # official train.py / train_object.py --lamb 0.1
    erase_scale: float = Field(1.0, gt=0)  # official --erase_scale 1
    preserve_scale: float = Field(0.1, ge=0)  # official --preserve_scale 0.1 (README lambda_2 = 0.1)
    uce_lamb: float = Field(0.5, ge=0)  # first stage: UCE's own default (uce.py, official train_erase.py)
    uce_erase_scale: float = Field(1.0, gt=0)  # first stage: UCE's own default
    # first stage: None = UCE's rule max(0.1, 1/len([''] + preserve)) (official erase_methods/train_uce.py)
    uce_preserve_scale: float | None = Field(None, ge=0)
    with_to_k: bool = True  # official close_form_emb(..., with_to_k=True) and edit_model_adversarial default


def edited_projections(pipe, with_to_k: bool = True) -> list:
    """The text projections UCE edits (adapter.text_projections): cross-attention values, then keys (unless
    with_to_k is off), then any other (SD3/FLUX: context_embedder, the pooled-text projection)."""
    ps = adapter_for(pipe).text_projections()
    return ([p for p in ps if p.role == "value"] + ([p for p in ps if p.role == "key"] if with_to_k else [])
            + [p for p in ps if p.role is None])


def adversarial_embedding(edited: list[torch.Tensor], original: list[torch.Tensor], c: torch.Tensor,
                          regular_scale: float) -> torch.Tensor:
    """RECE's closed-form attack: e* = argmin_e sum_l ||W'_l e - W_l c||^2 + regular_scale ||e||^2 for every row
    of c (L x d_in), with W'_l = edited[l], W_l = original[l] (d_out_l x d_in). Returns L x d_in (float64)."""
    d = c.shape[-1]
    A = regular_scale * torch.eye(d, dtype=torch.float64)
    B = torch.zeros(d, d, dtype=torch.float64)
    for We, Wo in zip(edited, original):
        We, Wo = We.double(), Wo.double()
        A = A + We.T @ We
        B = B + We.T @ Wo
    return torch.linalg.solve(A, B @ c.double().T).T  # rows: (A^-1 B c_i)^T


@register
class RECE(Eraser):
    name = "rece"
    summary = ("UCE's closed-form K/V edit, then epochs of: derive in closed form the embedding the edited model "
               "still maps to the concept, and erase it with the same closed form")
    changes = "UNet cross-attention to_k and to_v weights; on SD3/FLUX UCE's layers (context_embedder, pooled projection)"
    source = ("Gong et al., Reliable and Efficient Concept Erasure of Text-to-Image Diffusion Models, ECCV 2024; "
              "CharlesGong12/RECE")
    multi_concept = True
    Config = RECEConfig
    architectures = {"sd": None, "sdxl": None, "sd3": None, "flux": None}
    strength = {"erase_scale": "up", "uce_erase_scale": "up"}

    def check(self, pipe, req: EraseRequest, cfg: RECEConfig):
        UCE().check(pipe, req, cfg)
        if req.anchor and req.anchor.strip():
            adapter_for(pipe).check_prompt(req.anchor, "anchor")

    @torch.no_grad()
    def erase(self, pipe, req: EraseRequest, cfg: RECEConfig) -> dict:
        a = adapter_for(pipe)
        advance = self.progress(cfg.epochs + 1)
        layers = edited_projections(a, cfg.with_to_k)
        original = [p.linear.weight.detach().float().cpu().clone() for p in layers]
        uce = UCE()
        first = uce.erase(pipe, req, uce.resolve_config(pipe, UCEConfig(
            lamb=cfg.uce_lamb, erase_scale=cfg.uce_erase_scale, preserve_scale=cfg.uce_preserve_scale,
            with_to_k=cfg.with_to_k)))
        current = [first[f"{a.component}.{p.name}.weight"] for p in layers]  # float32, whatever the model's dtype
        advance(1, stage="uce")
        targets = list(req.targets)
        anchor = req.anchor if req.anchor and req.anchor.strip() else " "  # official new_texts default ' '
        cond, _ = a.encode(targets + [anchor])
        keep_texts = [""] + [p for p in dict.fromkeys(p.strip() for p in req.preserve) if p]  # official [''] + preserve
        k_cond = a.encode(keep_texts)[0]
        # what each kind of layer reads: token rows, and (SD3, FLUX) the pooled embedding, 1 row per prompt
        streams = {"tokens": (a.text_rows(cond).float().cpu(), a.text_rows(k_cond).float().cpu())}
        if any(p.reads == "pooled" for p in layers):
            streams["pooled"] = (a.pooled(cond).float().cpu().unsqueeze(1), a.pooled(k_cond).float().cpu())
        for epoch in range(cfg.epochs):
            residual = 0.0
            for reads, (hs, keep) in streams.items():
                idx = [i for i, p in enumerate(layers) if p.reads == reads]
                concepts, anchor_rows = hs[:-1], hs[-1]
                keep = keep.reshape(-1, hs.shape[-1])
                cur, orig = [current[i] for i in idx], [original[i] for i in idx]
                adv = torch.cat([adversarial_embedding(cur, orig, c, cfg.regular_scale) for c in concepts])
                residual += sum(float(((We.double() @ adv.T) - (Wo.double() @ concepts.reshape(-1, hs.shape[-1])
                                                                .double().T)).pow(2).sum()) for We, Wo in zip(cur, orig))
                solve = ClosedFormEdit(adv.float(), keep, cfg.lamb, cfg.erase_scale, cfg.preserve_scale)
                for i, W in zip(idx, cur):
                    V = (anchor_rows @ W.T).repeat(len(targets), 1)  # W' a_i at the same positions, per target
                    current[i] = solve(W, V)  # float32, kept here: the model's own copy may be float16
                    layers[i].linear.weight.copy_(current[i].to(layers[i].linear.weight.dtype))
            advance(1, stage=f"epoch {epoch + 1}", attack_residual=residual)
        return {f"{a.component}.{p.name}.weight": W.clone() for p, W in zip(layers, current)}
