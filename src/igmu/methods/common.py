"""What several methods share above the diffusion layer: request checks, the generic retain set, and the
closed-form least-squares edit of projection matrices (UCE, MACE, RECE).

Diffusion mechanics (text encoding, noising, the loss, sampling, attention recording, the adversarial
prompt loop) live in igmu.diffusion; the fine-tuning loop and parameter selection in methods/train.py."""
from __future__ import annotations

import re

import torch

from ..diffusion.arch import adapter_for
from ..errors import UserError

# The generic retain set, used when a method needs retain prompts and no --preserve is given: simple prompts
# in the mini world's vocabulary (other shapes, colours and styles, and a person), plain English for Stable
# Diffusion as well. A prompt that shares a content word with a target is dropped (generic_retain).
GENERIC_RETAIN = [
    "a red square on a dark background",
    "a blue triangle on a light background",
    "a green dotted star on a dark background",
    "a yellow heart on a light background",
    "a purple outlined diamond on a dark background",
    "an orange checkered moon on a light background",
    "a blue cross on a light background",
    "a person on a dark background",
]
_STOPWORDS = {"a", "an", "the", "on", "of", "in", "with", "and", "background", "photo", "image", "picture"}


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOPWORDS}


def generic_retain(targets: list[str]) -> list[str]:
    """GENERIC_RETAIN minus the prompts that share a content word with a target."""
    banned = set().union(*(content_words(t) for t in targets))
    return [p for p in GENERIC_RETAIN if not content_words(p) & banned]


def generic_retain_concepts(targets: list[str]) -> list[str]:
    """The content words of GENERIC_RETAIN that no target uses, as bare concept names (for methods whose
    official retain sets are lists of concept names, e.g. SPEED's data/instance.csv, GLoCE's anchor lists)."""
    banned = set().union(*(content_words(t) for t in targets))
    words = [w for p in GENERIC_RETAIN for w in sorted(content_words(p), key=p.index)]
    return [w for w in dict.fromkeys(words) if w not in banned]


def anchor_text(req) -> str:
    """The anchor (surrogate) concept of a request: --anchor, or the empty prompt when none is given."""
    return req.anchor.strip() if req.anchor and req.anchor.strip() else ""


def check_targets(pipe, req) -> None:
    """Every target must be encodable by this model."""
    a = adapter_for(pipe)
    for t in req.targets:
        a.check_prompt(t, "target")


def check_request(pipe, req) -> None:
    """One-line errors for a request: targets, anchor and preserved concepts must be encodable, a target
    may not repeat, and the anchor may not be one of the targets."""
    a = adapter_for(pipe)
    check_targets(a, req)
    if len(set(req.targets)) != len(req.targets):
        raise UserError("the same --target is given twice")
    if req.anchor and req.anchor.strip():
        a.check_prompt(req.anchor, "anchor")
    for p in req.preserve:
        a.check_prompt(p, "preserved concept")
    if anchor_text(req) and anchor_text(req) in req.targets:
        raise UserError("the --anchor is one of the targets; anchor the target to a different concept")


def spec_sampler(method, spec: dict, key: str, sample_fn):
    """The sampling hook of a spec made of `method`'s options plus a non-empty list of concept texts under `key`
    (AdaVD, SAFREE, SEOT): one UserError line when the spec is malformed."""
    from pydantic import ValidationError

    try:
        method.Config(**{k: v for k, v in spec.items() if k not in ("type", key)})
    except (ValidationError, TypeError) as e:
        raise UserError(f"artifact's {method.name} sampling spec is malformed: {str(e).splitlines()[0]}") from None
    texts = spec.get(key)
    if not (isinstance(texts, list) and texts and all(isinstance(t, str) and t for t in texts)):
        raise UserError(f"artifact's {method.name} sampling spec has no {key}")

    def sample(pipe, prompts, negative, latents, steps, guidance, height, width):
        return sample_fn(pipe, prompts, negative, latents, steps, guidance, height, width, spec)
    return sample


def last_token_rows(hs: torch.Tensor, mask: torch.Tensor, segments: list[tuple[int, int]] | None = None):
    """Each prompt's last-word-token row (the official closed-form scripts' `attention_mask.sum() - 2`: UCE's
    uce_sd_erase.py and uce_flux_edit.py, SPEED, AdaVD), in every text encoder's run of rows `segments`
    (adapter.token_segments(); default one run, the whole prompt); -1, the run's last row, for a prompt of no
    word under a tokenizer without a start token. (N * len(segments)) x D."""
    segments = segments or [(0, hs.shape[1])]
    out = []
    for i in range(len(hs)):
        for start, length in segments:
            k = int(mask[i, start:start + length].sum()) - 2
            out.append(hs[i, start + k % length])
    return torch.stack(out)


class ClosedFormEdit:
    """UCE's closed form (eq. 7, Gandikota et al. 2024) for every matrix W that reads the same keys:

        argmin_W'  erase_scale * sum_i ||W' k_i - v_i||^2 + preserve_scale * sum_j ||W' c_j - W c_j||^2
        + lamb * ||W' - W||_F^2
        W' = (lamb W + erase_scale V K^T + preserve_scale W C C^T) (lamb I + erase_scale K K^T + preserve_scale C C^T)^-1

    keys K: n x d_in (rows are k_i), keep C: m x d_in. The right-hand matrix depends only on the keys, so it
    is LU-factored once here and each call(W, V) (values V: n x d_out) costs one pair of triangular solves:
    the same solution as torch.linalg.solve, bit for bit, for the 140 cross-attention projections of SDXL at
    the price of one factorisation."""

    def __init__(self, keys: torch.Tensor, keep: torch.Tensor | None, lamb: float, erase_scale: float,
                 preserve_scale: float):
        K = keys.double()
        d = K.shape[1]
        mat2 = lamb * torch.eye(d, dtype=torch.float64) + erase_scale * K.T @ K
        self.C = keep.double() if keep is not None and len(keep) else None
        if self.C is not None:
            mat2 = mat2 + preserve_scale * self.C.T @ self.C
        self.K, self.lamb, self.erase_scale, self.preserve_scale = K, lamb, erase_scale, preserve_scale
        self.lu = torch.linalg.lu_factor(mat2)

    def __call__(self, W: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        W64 = W.double()
        mat1 = self.lamb * W64 + self.erase_scale * values.double().T @ self.K
        if self.C is not None:
            mat1 = mat1 + self.preserve_scale * (W64 @ self.C.T) @ self.C
        return torch.linalg.lu_solve(*self.lu, mat1.T).T.to(W.dtype)  # mat1 @ inv(mat2), solved stably


def closed_form_edit(W: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, keep: torch.Tensor | None,
                     lamb: float, erase_scale: float, preserve_scale: float) -> torch.Tensor:
    """One matrix's ClosedFormEdit (UCE, eq. 7): keys K: n x d_in (rows are k_i), values V: n x d_out, keep C:
    m x d_in."""
    return ClosedFormEdit(keys, keep, lamb, erase_scale, preserve_scale)(W, values)
