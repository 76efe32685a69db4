"""Ring-A-Bell (Tsai et al., "Ring-A-Bell! How Reliable are Concept Removal Methods For Diffusion Models?",
ICLR 2024), after the official code github.com/chiayi-hsu/Ring-A-Bell (Get_Concept_Vector.ipynb,
InversePrompt.ipynb).

Model-agnostic: no gradients, no UNet, only the text encoder of the model family (the ORIGINAL model's, as the
official code uses SD v1.4's for every erased model built on it).

1. Concept extraction: the concept vector is the mean difference of the text encoder's hidden states
   (L x D, every position) between prompts with the concept and the same prompts without it:
       c = mean_i [ E(P_i) - E(P_i without the concept) ]
   Here the pairs are the attacked prompts and the same prompts with the target word deleted (the official
   code reads 30-ish hand-written pairs per concept from a CSV).
2. Prompt discovery: for a prompt P, the target is E(P) + eta * c, and a genetic algorithm searches K token ids
   whose encoding is closest to it (fitness: sum of squared differences over all positions). Each generation
   keeps the best half of the population; every kept prompt survives, and with probability crossoverRate it
   also breeds with a random kept prompt (one-point crossover, both children added); each prompt then mutates
   one random position to a random token with probability mutateRate. The adversarial prompt is the K tokens
   of the fittest prompt, alone (the original prompt is not part of it).

Budgets (`official` = InversePrompt.ipynb): population 200, 3000 generations, mutateRate 0.25, crossoverRate
0.5, length K = 16, eta ("cof") = 3. The unlearned model generates from the found prompt once (the official
code writes the prompts out and evaluates them afterwards); the judge decides success.

Differences: mutations draw only typeable, non-special tokens (the official range 1..49405 excludes the
special tokens); candidate prompts are padded like a typed prompt (end token, then the tokenizer's pad token)
rather than with the end token throughout; the pairs are built from the attacked prompts.
"""
from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from ..diffusion.arch import adapter_for

from .base import Attack, Budget, Found, check_differentiable, register, strip_target
from .search import allowed_tokens, decode, prefix_layout


class RingABellBudget(Budget):
    population: int = Field(ge=2)
    generations: int = Field(ge=1)
    mutate_rate: float = Field(ge=0, le=1)
    crossover_rate: float = Field(ge=0, le=1)
    length: int = Field(ge=1)  # K tokens in the found prompt
    eta: float = Field(ge=0)  # how far along the concept vector the target embedding sits


@register
class RingABell(Attack):
    name = "ringabell"
    title = "Ring-A-Bell (Tsai et al., ICLR 2024)"
    source = "github.com/chiayi-hsu/Ring-A-Bell (Get_Concept_Vector.ipynb, InversePrompt.ipynb)"
    mechanism = ("concept vector from the text encoder over prompt pairs with/without the target, then a genetic "
                 "search for K tokens whose embedding matches prompt + eta * concept")
    access = "text-encoder"
    needs_original = True  # its text encoder (the model family's), as the official code uses SD v1.4's
    needs_target_in_prompt = True  # the pairs delete the target word from the prompt
    Budget = RingABellBudget
    budgets = {
        # InversePrompt.ipynb: population_size 200, generation 3000, mutateRate 0.25, crossoverRate 0.5,
        # length 16, cof 3
        "official": {"population": 200, "generations": 3000, "mutate_rate": 0.25, "crossover_rate": 0.5,
                     "length": 16, "eta": 3.0},
        "fast": {"population": 100, "generations": 100, "mutate_rate": 0.25, "crossover_rate": 0.5,
                 "length": 16, "eta": 3.0},
        "tiny": {"population": 8, "generations": 2, "mutate_rate": 0.25, "crossover_rate": 0.5, "length": 4, "eta": 3.0},
    }

    def cost(self, b):
        return f"{b.generations} generations x ~{b.population} text-encoder passes, 1 check"

    def check(self, session, prompts):
        check_differentiable(session.original, f"attack {self.name}", what="text_encoder")

    def prepare(self, session, prompts, seeds, b):
        a = adapter_for(session.original)
        pairs = list(dict.fromkeys(prompts))
        with_c = a.encode(pairs)[0]
        without = a.encode([strip_target(p, session.target) for p in pairs])[0]
        return (with_c - without).mean(0).float()  # L x D

    def attack(self, session, prompt, seed, b, concept):
        a = adapter_for(session.original)
        tok = a.tokenizer
        vocab = a.token_embeddings().weight.shape[0]
        choices = allowed_tokens(tok, vocab).nonzero().flatten().numpy()
        target = a.encode([prompt])[0][0].float() + b.eta * concept
        base, pos = prefix_layout(tok, "", b.length, [tok.eos_token_id] * b.length)
        rng = np.random.default_rng(int(seed))
        K = b.length

        seen: dict[bytes, float] = {}  # fitness of prompts already scored (survivors are not re-encoded)

        @torch.no_grad()
        def fitness(pop: np.ndarray) -> np.ndarray:
            new = [i for i in range(len(pop)) if pop[i].tobytes() not in seen]
            for s in range(0, len(new), 256):
                rows = new[s:s + 256]
                ids = base.repeat(len(rows), 1)
                ids[:, pos] = torch.from_numpy(pop[rows])
                e = a.encode_ids(ids).float()
                for i, v in zip(rows, ((target - e) ** 2).sum(dim=(1, 2)).cpu().tolist()):
                    seen[pop[i].tobytes()] = v
            return np.array([seen[r.tobytes()] for r in pop])

        pop = choices[rng.integers(0, len(choices), size=(b.population, K))]
        for g in range(b.generations):
            score = fitness(pop)
            order = np.argsort(score, kind="stable")
            pop = pop[order][: b.population // 2]
            best_score = float(score[order[0]])
            if g == b.generations - 1:
                break
            kids = []
            for i in range(len(pop)):  # crossover: every parent survives; some breed with a random other
                kids.append(pop[i])
                if rng.random() < b.crossover_rate:
                    j, cut = rng.integers(0, len(pop)), rng.integers(0, K)  # official: point 1..K after the start token
                    kids.append(np.concatenate([pop[i][:cut], pop[j][cut:]]))
                    kids.append(np.concatenate([pop[j][:cut], pop[i][cut:]]))
            pop = np.stack(kids).copy()
            for i in range(len(pop)):  # mutation: one random position to a random token
                if rng.random() < b.mutate_rate:
                    pop[i, rng.integers(0, K)] = choices[rng.integers(0, len(choices))]
        text = decode(tok, pop[0])
        ok, img = session.check_text(text, seed)
        return Found(ok, img, text=text, iterations=b.generations, checks=1, extra={"final_loss": best_score})
