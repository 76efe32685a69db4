"""The one adversarial prompt inner loop: optimise k prompt-token embeddings against a loss.

A prompt gets k extra token slots right after the start token (UnlearnDiffAtk's
"prefix_k" perturbation). The slots' embeddings are free vectors; the text
encoder runs with them in place of its token embeddings (a forward hook on the
token-embedding layer, so any CLIP-style text encoder works, and gradients
reach both the slots and the encoder). A caller supplies the loss of the
resulting hidden states:

- AdvUnlearn, Receler (methods/): the loss their inner maximisation uses.

It lives in the diffusion layer, below both methods/ and attacks/; the attacks (attacks/) run their own
searches, as their official code does (attacks/search.py), and encode through `with_slots`.

discrete=True keeps the attack a real prompt: the forward pass uses the nearest
vocabulary embedding of each slot and the gradient passes straight through to
the continuous vector (the projected-gradient scheme of PEZ, Wen et al. 2023,
which igmu's first UnlearnDiffAtk followed; the official one optimises a relaxed one-hot, attacks/unlearndiffatk.py). The result's `text` is the
adversarial prompt, which anyone can type. discrete=False leaves the slots as
soft embeddings (AdvUnlearn's fast attack, Receler's adversarial embeddings).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import UserError
from .arch import adapter_for


@dataclass
class AdvPrompt:
    ids: torch.Tensor  # 1 x L token ids, with the slots filled by their nearest tokens
    positions: list[int]  # where the slots are
    vectors: torch.Tensor  # k x D slot embeddings as optimised (continuous)
    text: str  # the adversarial prompt (decoded slot tokens + the prompt)
    discrete: bool
    losses: list[float] = field(default_factory=list)
    stopped_at: int | None = None  # iteration at which on_step asked to stop (success), if it did


def slotted_ids(pipe, prompt: str, k: int, fill: list[int]) -> tuple[torch.Tensor, list[int]]:
    """Token ids of `prompt` with k slots inserted after the start token, padded to the model length."""
    a = adapter_for(pipe)
    tokenizer, L = a.tokenizer, a.max_length
    ids = a.token_ids(prompt)
    if len(ids) + k > L:
        raise UserError(f"prompt {prompt!r} leaves no room for {k} adversarial tokens (limit {L} tokens)")
    ids = ids[:1] + list(fill) + ids[1:]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids[-1]
    ids = ids + [pad] * (L - len(ids))
    return torch.tensor([ids]), list(range(1, 1 + k))


class with_slots:
    """Context manager: while active, the token embeddings at `positions` are `vectors` (in `table`, the text
    encoder's token-embedding layer)."""

    def __init__(self, table: torch.nn.Embedding, positions: list[int], vectors: torch.Tensor):
        self.table, self.positions, self.vectors = table, positions, vectors

    def __enter__(self):
        def hook(_mod, _inp, out):
            out = out.clone()
            out[:, self.positions] = self.vectors.to(out.dtype).unsqueeze(0).expand(out.shape[0], -1, -1)
            return out
        self.handle = self.table.register_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        return False


def encode_slots(pipe, ids: torch.Tensor, positions: list[int], vectors: torch.Tensor,
                 text_encoder=None) -> torch.Tensor:
    """Conditioning (1 x L x D) of `ids` with `vectors` at `positions` (keeps autograd); `text_encoder`
    defaults to the pipeline's."""
    a = adapter_for(pipe)
    with with_slots(a.token_embeddings(text_encoder), positions, vectors):
        return a.encode_ids(ids, text_encoder)


def _allowed(tokenizer, vocab: int) -> torch.Tensor:
    ok = torch.ones(vocab, dtype=torch.bool)
    for i in set(tokenizer.all_special_ids):
        if 0 <= i < vocab:
            ok[i] = False
    return ok


def nearest_tokens(vectors: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Index of the nearest (L2) allowed vocabulary embedding for each row of `vectors`."""
    d = torch.cdist(vectors.detach().float(), table.detach().float())
    d[:, ~allowed] = float("inf")
    return d.argmin(1)


def optimise_prompt(pipe, prompt: str, loss_of: Callable[[torch.Tensor], torch.Tensor], k: int = 5,
                    steps: int = 40, lr: float = 0.01, discrete: bool = True, generator=None,
                    text_encoder=None, on_step: Callable[[int, "AdvPrompt"], bool] | None = None) -> AdvPrompt:
    """Minimise loss_of(hidden states) over k slot embeddings inserted after the start token of `prompt`.

    Slots start at the embeddings of k random vocabulary tokens. Adam on the slot vectors; with
    discrete=True every forward uses the nearest-token projection (straight-through gradient).
    `on_step(i, current)` after each step may return True to stop early (e.g. the attack succeeded).
    `text_encoder` defaults to the pipeline's (AdvUnlearn passes the encoder it is training).
    """
    if k < 1 or steps < 1:
        raise UserError(f"an adversarial prompt needs at least 1 token and 1 step (got k={k}, steps={steps})")
    a = adapter_for(pipe)
    table = a.token_embeddings(text_encoder).weight
    allowed = _allowed(a.tokenizer, table.shape[0])
    choices = allowed.nonzero().flatten()
    init = choices[torch.randint(len(choices), (k,), generator=generator)]
    vectors = table[init].detach().clone().float().requires_grad_(True)
    ids, positions = slotted_ids(a, prompt, k, init.tolist())
    opt = torch.optim.Adam([vectors], lr=lr)
    result = AdvPrompt(ids, positions, vectors.detach().clone(), "", discrete)

    def snapshot(vec):
        picked = nearest_tokens(vec, table, allowed)
        ids2 = ids.clone()
        ids2[0, positions] = picked
        result.ids, result.vectors = ids2, vec.detach().clone()
        words = a.tokenizer.decode(picked.tolist()).strip()
        result.text = f"{words} {prompt}".strip()

    for i in range(steps):
        if discrete:
            proj = table[nearest_tokens(vectors, table, allowed)].float()
            used = vectors + (proj - vectors).detach()
        else:
            used = vectors
        loss = loss_of(encode_slots(a, ids, positions, used, text_encoder))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        result.losses.append(float(loss.detach()))
        snapshot(vectors)
        if on_step is not None and on_step(i, result):
            result.stopped_at = i
            break
    return result


def slot_conditioning(pipe, adv: AdvPrompt, text_encoder=None) -> torch.Tensor:
    """Hidden states of an attack result: the exact tokens (discrete) or the soft slot vectors."""
    a = adapter_for(pipe)
    with torch.no_grad():
        if adv.discrete:
            return a.encode_ids(adv.ids, text_encoder)
        return encode_slots(a, adv.ids, adv.positions, adv.vectors, text_encoder)
