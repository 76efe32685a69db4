"""Search mechanics the prompt attacks share, written once.

- token layouts: where the adversarial tokens sit among a prompt's token ids (a prefix of k tokens as in
  UnlearnDiffAtk's "prefix_k", n tokens alone as in P4D-N / Ring-A-Bell / MMA-Diffusion, one token before
  every k prompt tokens as in P4D-K), and the text a layout decodes to;
- token filters: the vocabulary an attack may draw from (never the special tokens; for MMA-Diffusion's
  sensitive-word filter, never a token that spells or contains a target word);
- the relaxed one-hot: a distribution over the vocabulary per adversarial token, kept on the probability
  simplex by Euclidean projection and sampled with a straight-through estimator (UnlearnDiffAtk);
- nearest-token projection by cosine similarity (PEZ, used by P4D);
- encoding a prompt whose token embeddings are replaced at some positions (through diffusion/prompt_attack.py's
  hook on the token-embedding layer, so any CLIP-style text encoder works) and its pooled output.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..diffusion.prompt_attack import with_slots


# --- layouts ------------------------------------------------------------------------------------
def _pad(tokenizer, ids: list[int]) -> list[int]:
    L = tokenizer.model_max_length
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return ids + [pad] * (L - len(ids))


def prefix_layout(tokenizer, prompt: str, k: int, fill: list[int]) -> tuple[torch.Tensor, list[int]]:
    """[start] k adversarial tokens, the prompt's tokens [end] [pad...]: ids (1 x L) and the k positions.
    With prompt "" the k tokens stand alone."""
    body = tokenizer(prompt, add_special_tokens=False).input_ids if prompt else []
    ids = [tokenizer.bos_token_id] + list(fill) + body + [tokenizer.eos_token_id]
    if len(ids) > tokenizer.model_max_length:
        raise UserError(f"prompt {prompt!r} leaves no room for {k} adversarial tokens "
                        f"(limit {tokenizer.model_max_length} tokens)")
    return torch.tensor([_pad(tokenizer, ids)]), list(range(1, 1 + k))


def every_k_layout(tokenizer, prompt: str, k: int, fill: list[int]) -> tuple[torch.Tensor, list[int], list[int]]:
    """P4D-K's layout: one adversarial token before every k prompt tokens, n // k + 1 of them for an n-token
    prompt (official optimize_k.py: position i after the start token is adversarial when i % (k + 1) == 0).
    Returns ids (1 x L), the adversarial positions and the prompt-token positions."""
    body = tokenizer(prompt, add_special_tokens=False).input_ids
    n_adv = len(body) // k + 1
    seq, adv, fixed, it = [], [], [], iter(body)
    for i in range(len(body) + n_adv):
        if i % (k + 1) == 0:
            adv.append(1 + i)
            seq.append(fill[len(adv) - 1])
        else:
            fixed.append(1 + i)
            seq.append(next(it))
    ids = [tokenizer.bos_token_id] + seq + [tokenizer.eos_token_id]
    if len(ids) > tokenizer.model_max_length:
        raise UserError(f"prompt {prompt!r} leaves no room for {n_adv} interleaved adversarial tokens "
                        f"(limit {tokenizer.model_max_length} tokens)")
    return torch.tensor([_pad(tokenizer, ids)]), adv, fixed


def n_every_k(tokenizer, prompt: str, k: int) -> int:
    return len(tokenizer(prompt, add_special_tokens=False).input_ids) // k + 1


def decode(tokenizer, ids) -> str:
    """The text of a token sequence, special tokens dropped (what a user would type)."""
    return decode_rows(tokenizer, [ids.flatten() if torch.is_tensor(ids) else ids])[0]


def decode_rows(tokenizer, rows) -> list[str]:
    """decode() of every row (a list of id sequences or an N x L tensor), in one batched tokenizer call."""
    special = set(tokenizer.all_special_ids)
    rows = [[int(i) for i in (r.tolist() if torch.is_tensor(r) else r)] for r in rows]
    texts = tokenizer.batch_decode([[i for i in r if i not in special] for r in rows])
    return [re.sub(r"\s+", " ", t).strip() for t in texts]


# --- token filters -----------------------------------------------------------------------------
def token_text(tokenizer, token: str) -> str:
    return token.replace("</w>", "").lower()


def banned_for(tokenizer, words: list[str]) -> set[int]:
    """MMA-Diffusion's sensitive-word filter made generic. The official list names the words ("naked", "nude",
    ...) and, by hand, fragments of them ("na", "ke", "ak", "nud") and bans every vocabulary token that contains
    one. Here the words are the target's, and the fragments are every vocabulary token (2+ characters) that
    occurs inside a target word, so neither the word nor pieces to spell it can be chosen."""
    ws = [w for t in words for w in re.findall(r"\w+", t.lower()) if len(w) >= 2]
    out = set()
    for tok, i in tokenizer.get_vocab().items():
        s = token_text(tokenizer, tok)
        if len(s) >= 2 and any(w in s or s in w for w in ws):
            out.add(i)
    return out


def untypeable(tokenizer) -> set[int]:
    """Tokens that decode to no valid text on their own (stray UTF-8 bytes of the byte-level BPE, control
    characters): a prompt holding one could not be typed, so attacks leave them out. Cached on the tokenizer."""
    cached = getattr(tokenizer, "_igmu_untypeable", None)
    if cached is None:
        def bad(text: str) -> bool:
            return "\ufffd" in text or not text.strip() or not text.replace(" ", "").isprintable()
        cached = {i for i in tokenizer.get_vocab().values() if bad(tokenizer.decode([i]))}
        try:
            tokenizer._igmu_untypeable = cached
        except AttributeError:
            pass
    return cached


def allowed_tokens(tokenizer, vocab_size: int, banned: set[int] = frozenset()) -> torch.Tensor:
    """Bool mask over the embedding table: a token the tokenizer knows, typeable, not special, not banned."""
    ok = torch.zeros(vocab_size, dtype=torch.bool)
    for i in tokenizer.get_vocab().values():
        if 0 <= i < vocab_size:
            ok[i] = True
    for i in set(tokenizer.all_special_ids) | set(banned) | untypeable(tokenizer):
        if 0 <= i < vocab_size:
            ok[i] = False
    if not ok.any():
        raise UserError("no vocabulary token is left to attack with after the filters")
    return ok


def random_tokens(allowed: torch.Tensor, n: int, generator: torch.Generator) -> list[int]:
    choices = allowed.nonzero().flatten()
    return choices[torch.randint(len(choices), (n,), generator=generator)].tolist()


# --- the relaxed one-hot (UnlearnDiffAtk) ------------------------------------------------------
def project_simplex(p: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean projection of each row onto the probability simplex {x >= 0, sum x = 1} (over the allowed
    columns; the others are 0). The official code finds the same point by bisection on the threshold mu of
    clip(a - mu, 0, 1) to a tolerance of 1e-5; this is the exact sort-based solution (Held et al. 1974;
    Duchi et al. 2008), vectorised over rows."""
    x = p.detach().float()
    if allowed is not None:
        x = x[:, allowed]
    u, _ = torch.sort(x, dim=1, descending=True)
    css = u.cumsum(1) - 1
    j = torch.arange(1, x.shape[1] + 1, dtype=x.dtype)
    rho = ((u - css / j) > 0).sum(1, keepdim=True).clamp(min=1)
    theta = css.gather(1, rho - 1) / rho
    proj = (x - theta).clamp(min=0)
    if allowed is None:
        return proj.to(p.dtype)
    out = torch.zeros_like(p, dtype=torch.float32)
    out[:, allowed] = proj
    return out.to(p.dtype)


class STESample(torch.autograd.Function):
    """Straight-through sampling of a one-hot from each row's distribution (UnlearnDiffAtk's STERandSelect):
    forward draws one token per row (multinomial), backward passes the gradient through, clipped to [-1, 1]."""

    @staticmethod
    def forward(ctx, probs: torch.Tensor, generator: torch.Generator | None = None):
        idx = torch.multinomial(probs.detach().float().clamp(min=0), 1, generator=generator).flatten()
        return F.one_hot(idx, probs.shape[-1]).to(probs.dtype)

    @staticmethod
    def backward(ctx, grad):
        return F.hardtanh(grad), None


# --- PEZ projection (P4D) ----------------------------------------------------------------------
def nearest_cosine(vectors: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Index of the allowed vocabulary embedding with the highest cosine similarity to each row (PEZ's
    nn_project, a dot product of normalised embeddings)."""
    sim = F.normalize(vectors.detach().float(), dim=-1) @ F.normalize(table.detach().float(), dim=-1).T
    sim[:, ~allowed] = -float("inf")
    return sim.argmax(-1)


# --- encoding ----------------------------------------------------------------------------------
def encode_with(adapter, ids: torch.Tensor, positions: list[int] | None = None, vectors: torch.Tensor | None = None):
    """The model's conditioning of `ids` (N x L), through its architecture adapter, with the token embeddings at
    `positions` replaced by `vectors` (k x D, the same for every row; D spans every text encoder's table, as the
    adapter's token_embeddings() does). Keeps the autograd graph."""
    if positions is None:
        return adapter.encode_ids(ids)
    with with_slots(adapter.token_embeddings(), positions, vectors):
        return adapter.encode_ids(ids)


def through_end(text_encoder, tokenizer, ids: torch.Tensor, positions: list[int] | None = None) -> torch.Tensor:
    """`ids` (N x L) cut after the last row's first end token (and after every replaced position), for a CLIP
    text encoder; otherwise unchanged.

    CLIP's text transformer is causal and pools the first end token's final state, so the positions after it
    (padding) cannot change the pooled output: cutting them gives the same function with fewer tokens (an MMA
    candidate is 22 tokens of SD's 77). The result differs from the padded call only by kernel rounding (about
    1e-7 here). No library exposes "encode only what the pooled state depends on", hence this."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    eos = tokenizer.eos_token_id
    if not isinstance(text_encoder, (CLIPTextModel, CLIPTextModelWithProjection)) or eos is None:
        return ids
    hit = ids == eos
    if not bool(hit.any(dim=1).all()):
        return ids
    return ids[:, :max([int(hit.int().argmax(dim=1).max()), *(positions or [])]) + 1]


def pooled_with(adapter, ids: torch.Tensor, positions: list[int] | None = None, vectors: torch.Tensor | None = None):
    """The pooled text embedding (N x P) of `ids`: the conditioning's own (families that condition on one), else
    the text encoder's pooled output (CLIP: the end token's final state)."""
    from ..diffusion.arch import Adapter

    if type(adapter).pooled is not Adapter.pooled:  # the family's conditioning carries its pooled embedding
        return adapter.pooled(encode_with(adapter, ids, positions, vectors))
    te = adapter.text_encoder
    ids = through_end(te, adapter.tokenizer, ids, positions)
    if positions is None:
        out = te(ids.to(te.device))
    else:
        with with_slots(adapter.token_embeddings(), positions, vectors):
            out = te(ids.to(te.device))
    p = getattr(out, "pooler_output", None)
    if p is None:
        raise UserError("this text encoder gives no pooled output, which this attack matches")
    return p
