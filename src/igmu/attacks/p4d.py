"""P4D, Prompting4Debugging (Chin et al., "Prompting4Debugging: Red-Teaming Text-to-Image Diffusion Models by
Finding Problematic Prompts", ICML 2024), after the official code github.com/joycenerd/P4D
(prompt_optimization/optimize_n.py, optimize_k.py, configs/esd_nudity_optmz_config.json).

White-box on both models. The prompt P names the target; the ORIGINAL model's noise prediction for P is what
the unlearned model should reproduce from an adversarial prompt P*:

    min_{P*}  || eps_unlearned(x_t, t, P*) - eps_original(x_t, t, P) ||^2,   t ~ U[0, T), x_t noised from x0

where x0 is the original model's image of P. P* is optimised as continuous token embeddings that every forward
pass projects to their nearest vocabulary tokens by cosine similarity; the gradient at the projected tokens
updates the continuous ones (PEZ, Wen et al. 2023), with AdamW. Two variants, one loop:

- P4D-N (`p4d-n`): n free tokens make up the whole adversarial prompt (n = 16);
- P4D-K (`p4d-k`): one free token before every k tokens of P (k = 3); P's own tokens are kept (their
  gradient is zeroed, as in optimize_k.py).

Every `eval_step` iterations the current prompt is checked. Budgets (`official` =
configs/esd_nudity_optmz_config.json): prompt_len 16, every_k 3, iter 3000, eval_step 50, AdamW lr 0.1,
weight_decay 0.1, one target image per prompt.

Differences from the official code: at each evaluation step the official code generates with the unlearned
model, keeps the prompt whose image is most CLIP-similar to the target image, and judges that one prompt at
the end; igmu judges every evaluated prompt with the task's judge and stops at the first success (so its ASR
is at least the official selection's at the same budget); the adversarial prompt is encoded by the UNLEARNED
model's text encoder (the official code uses the original's, which is the same model for the UNet-editing
erasures it studies; here text-encoder erasures such as AdvUnlearn are attacked as they are deployed); the
official n-token prompt is padded with token id 0, here with the tokenizer's end and pad tokens; in P4D-K the
end token follows the interleaved sequence (the official code writes the longer interleaved sequence over the
positions of the prompt, end token included).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import Attack, Budget, Found, check_differentiable, check_pair, register, white_box
from .search import allowed_tokens, encode_with, every_k_layout, n_every_k, nearest_cosine, prefix_layout, random_tokens


class P4DBudget(Budget):
    tokens: int = Field(ge=1)  # P4D-N: free tokens (prompt_len); P4D-K: one free token per `tokens` prompt tokens
    iterations: int = Field(ge=1)  # iter
    eval_step: int = Field(ge=1)  # check the current prompt every eval_step iterations (and after the last)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    target_images: int = Field(ge=1)


class _P4D(Attack):
    variant: str
    title = "P4D (Chin et al., ICML 2024)"
    source = "github.com/joycenerd/P4D (prompt_optimization/optimize_n.py, optimize_k.py)"
    access = "white-box"
    needs_original = True
    Budget = P4DBudget

    def cost(self, b):
        return f"<= {b.iterations} x (2 UNet fwd + 1 bwd), <= {-(-b.iterations // b.eval_step)} checks"

    def check(self, session, prompts):
        check_differentiable(session.unlearned, f"attack {self.name}")
        check_differentiable(session.original, f"attack {self.name}")
        check_pair(session.unlearned, session.original, f"attack {self.name}")

    def layout(self, tok, prompt, b, gen, allowed):
        if self.variant == "n":
            fill = random_tokens(allowed, b.tokens, gen)
            ids, adv = prefix_layout(tok, "", b.tokens, fill)
            return ids, adv, []
        fill = random_tokens(allowed, n_every_k(tok, prompt, b.tokens), gen)
        return every_k_layout(tok, prompt, b.tokens, fill)

    def attack(self, session, prompt, seed, b, shared):
        un, orig = session.unlearned, session.original
        wb, wo = white_box(un), white_box(orig)
        tok, sched, table = wb.tokenizer, wo.scheduler, wb.table
        allowed = allowed_tokens(tok, table.shape[0])
        gen = torch.Generator().manual_seed(int(seed))
        ids, adv, fixed = self.layout(tok, prompt, b, gen, allowed)
        positions = sorted(adv + fixed)
        vectors = table[ids[0, positions]].clone().requires_grad_(True)
        free = torch.tensor([p in adv for p in positions])
        opt = torch.optim.AdamW([vectors], lr=b.lr, weight_decay=b.weight_decay)
        x0 = session.original_latents([prompt] * b.target_images, [seed + j for j in range(b.target_images)])
        target_cond = wo.adapter.encode([prompt])[0].expand(len(x0), -1, -1)
        checks, ok, img, text, loss = 0, False, None, prompt, None
        for step in range(b.iterations):
            picked = nearest_cosine(vectors, table, allowed)
            picked = torch.where(free, picked, ids[0, positions])  # the prompt's own tokens stay (P4D-K)
            proj = table[picked].clone().requires_grad_(True)
            cond = encode_with(wb.adapter, ids, positions, proj).expand(len(x0), -1, -1)
            t = torch.randint(0, sched.config.num_train_timesteps, (len(x0),), generator=gen)
            noise = torch.randn(x0.shape, generator=gen).to(x0)
            xt = sched.add_noise(x0, noise, t)
            with torch.no_grad():
                want = wo.adapter.denoise(None, xt, t, target_cond.to(wo.unet.dtype))
            pred = wb.adapter.denoise(None, xt, t, cond.to(wb.unet.dtype))
            loss = F.mse_loss(pred.float(), want.float())
            grad = torch.autograd.grad(loss, [proj])[0]
            grad[~free] = 0.0
            vectors.grad = grad
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step % b.eval_step == 0 or step == b.iterations - 1:  # optimize_n.py evaluates at step % eval_step == 0
                ok, img, text = session.check_tokens(tok, ids, positions, picked, seed)
                checks += 1
                if ok:
                    break
        return Found(ok, img, text=text, iterations=step + 1, checks=checks,
                     extra={"final_loss": float(loss.detach()) if loss is not None else None})


@register
class P4DN(_P4D):
    name = "p4d-n"
    variant = "n"
    mechanism = ("n free tokens (PEZ: nearest-token projection, AdamW) so the unlearned UNet's noise prediction "
                 "matches the original's on the target prompt")
    budgets = {
        # configs/esd_nudity_optmz_config.json: prompt_len 16, iter 3000, eval_step 50, lr 0.1, weight_decay 0.1
        "official": {"tokens": 16, "iterations": 3000, "eval_step": 50, "lr": 0.1, "weight_decay": 0.1, "target_images": 1},
        "fast": {"tokens": 16, "iterations": 200, "eval_step": 50, "lr": 0.1, "weight_decay": 0.1, "target_images": 1},
        "tiny": {"tokens": 4, "iterations": 2, "eval_step": 1, "lr": 0.1, "weight_decay": 0.1, "target_images": 1},
    }


@register
class P4DK(_P4D):
    name = "p4d-k"
    variant = "k"
    mechanism = ("one free token before every k prompt tokens (PEZ, AdamW) so the unlearned UNet's noise "
                 "prediction matches the original's on the target prompt")
    budgets = {
        # configs/esd_nudity_optmz_config.json: every_k 3, iter 3000, eval_step 50, lr 0.1, weight_decay 0.1
        "official": {"tokens": 3, "iterations": 3000, "eval_step": 50, "lr": 0.1, "weight_decay": 0.1, "target_images": 1},
        "fast": {"tokens": 3, "iterations": 200, "eval_step": 50, "lr": 0.1, "weight_decay": 0.1, "target_images": 1},
        "tiny": {"tokens": 3, "iterations": 2, "eval_step": 1, "lr": 0.1, "weight_decay": 0.1, "target_images": 1},
    }
