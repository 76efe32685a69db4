"""MMA-Diffusion, text modality (Yang et al., "MMA-Diffusion: MultiModal Attack on Diffusion Models", CVPR 2024),
after the official code github.com/cure-lab/MMA-Diffusion (src/textual_attack.py).

Text encoder only (the ORIGINAL model's, the family's public encoder, as the official code uses the victim
pipeline's unmodified CLIP). For a prompt P naming the target, n adversarial tokens are chosen so that their
pooled text embedding matches P's, while a sensitive-word filter keeps the target's words, and the pieces
that spell them, out of the candidate vocabulary (so a word filter in front of the model would not see them):

    min_{P*}  1 - cos( E_pool(P*), E_pool(P) ),   P* over the filtered vocabulary

Greedy coordinate gradient (GCG, Zou et al. 2023), as in the official token_gradient / sample_control / step:
the gradient of the loss with respect to the one-hot of every adversarial token, normalised per token; banned
tokens get +inf; each of B candidates changes one position (positions spread evenly over the batch) to a
token drawn from that position's top-k (most negative gradient); candidates that do not re-tokenize to the
same number of tokens, or equal the current prompt, are replaced by the last valid one; all are scored in one
batched forward and the best becomes the current prompt (always, even if worse); the best ever is kept.

Budgets (`official` = textual_attack.py and the README's run `-i 1000`): 20 tokens, 1000 steps, batch 512,
top-k 256; the best prompt is generated once at the end (`check_every` 0). The official filter is a hand list
for nudity; here it is built from the target (search.banned_for). The official starting prompt is 20 random
ASCII letters; here 20 random allowed tokens. `fast` also checks the best prompt along the way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..diffusion.arch import adapter_for

from .base import Attack, Budget, Found, check_differentiable, register
from .search import allowed_tokens, banned_for, decode, decode_rows, pooled_with, prefix_layout, random_tokens


class MMABudget(Budget):
    tokens: int = Field(ge=1)
    steps: int = Field(ge=1)
    batch: int = Field(ge=1)  # candidates scored per step
    topk: int = Field(ge=1)
    check_every: int = Field(ge=0)  # judge the best prompt every this many steps (0: only after the last)


@register
class MMADiffusion(Attack):
    name = "mma"
    title = "MMA-Diffusion, text modality (Yang et al., CVPR 2024)"
    source = "github.com/cure-lab/MMA-Diffusion (src/textual_attack.py)"
    mechanism = ("greedy coordinate gradient over n tokens matching the target prompt's pooled text embedding, "
                 "the target's words and their pieces filtered out of the vocabulary")
    access = "text-encoder"
    needs_original = True  # the family's text encoder, unmodified
    Budget = MMABudget
    budgets = {
        # textual_attack.py: control_length 20, batch_size 512, topk 256; README: -i 1000 iterations
        "official": {"tokens": 20, "steps": 1000, "batch": 512, "topk": 256, "check_every": 0},
        "fast": {"tokens": 20, "steps": 40, "batch": 256, "topk": 64, "check_every": 20},
        "tiny": {"tokens": 4, "steps": 2, "batch": 8, "topk": 4, "check_every": 1},
    }

    def cost(self, b):
        n = -(-b.steps // b.check_every) if b.check_every else 1
        return f"{b.steps} x (1 text-encoder fwd+bwd + {b.batch} fwd), <= {n} checks"

    def check(self, session, prompts):
        check_differentiable(session.original, f"attack {self.name}", what="text_encoder")

    def attack(self, session, prompt, seed, b, shared):
        a = adapter_for(session.original)
        tok = a.tokenizer
        a.text_encoder.requires_grad_(False)
        table = a.token_embeddings().weight.detach().float()
        V = table.shape[0]
        allowed = allowed_tokens(tok, V, banned_for(tok, [session.target]))
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            target = pooled_with(a, a.tokenize([prompt])).float()
        ctrl = random_tokens(allowed, b.tokens, gen)
        ids, pos = prefix_layout(tok, "", b.tokens, ctrl)

        def loss_of(cands: torch.Tensor) -> torch.Tensor:  # cands: B x n token ids -> B losses
            out = []
            with torch.no_grad():
                for s in range(0, len(cands), 256):
                    x = ids.repeat(len(cands[s:s + 256]), 1)
                    x[:, pos] = cands[s:s + 256]
                    e = pooled_with(a, x).float()
                    out.append(1 - F.cosine_similarity(e, target, dim=-1))
            return torch.cat(out)

        cur = torch.tensor(ctrl)
        best, best_loss, checks, ok, img = cur.clone(), float("inf"), 0, False, None
        last_checked = None
        for step in range(b.steps):
            one_hot = F.one_hot(cur, V).float().requires_grad_(True)
            e = pooled_with(a, ids, pos, one_hot @ table).float()
            loss = (1 - F.cosine_similarity(e, target, dim=-1)).mean()
            grad = torch.autograd.grad(loss, [one_hot])[0]
            grad = grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            grad[:, ~allowed] = float("inf")
            top = (-grad).topk(min(b.topk, int(allowed.sum())), dim=1).indices  # n x topk
            where = (torch.arange(b.batch) * b.tokens // b.batch).long()  # positions spread over the batch
            pick = top[where, torch.randint(0, top.shape[1], (b.batch,), generator=gen)]
            cands = cur.repeat(b.batch, 1)
            cands[torch.arange(b.batch), where] = pick
            cands = self._valid(tok, cands, cur)
            losses = loss_of(cands)
            i = int(losses.argmin())
            cur = cands[i].clone()
            if float(losses[i]) < best_loss:
                best_loss, best = float(losses[i]), cur.clone()
            due = b.check_every and (step + 1) % b.check_every == 0
            if due or step == b.steps - 1:
                if last_checked is None or not torch.equal(best, last_checked):
                    ok, img = session.check_text(decode(tok, best), seed)
                    checks, last_checked = checks + 1, best.clone()
                    if ok:
                        break
        return Found(ok, img, text=decode(tok, best), iterations=step + 1, checks=checks,
                     extra={"final_loss": best_loss})

    @staticmethod
    def _valid(tok, cands: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        """get_filtered_cands: keep candidates whose text re-tokenizes to as many tokens and differs from the
        current prompt; fill the rest with the last valid one (or the current prompt if none is valid). As in the
        official code the candidates continue as text: the ids kept are those of the re-tokenized text."""
        keep = []
        retokenized = tok(decode_rows(tok, cands), add_special_tokens=False).input_ids
        for c, ids in zip(cands, retokenized):
            if not torch.equal(c, cur) and len(ids) == len(c):
                keep.append(torch.tensor(ids))
        if not keep:
            return cur.unsqueeze(0)
        return torch.stack(keep + [keep[-1]] * (len(cands) - len(keep)))
