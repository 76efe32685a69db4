"""The attack interface: a registry of attacks, named budgets, and one protocol for success and cost.

Every attack answers the same question about an unlearned model: for a prompt that asks for the
erased target, can the target be brought back? It is run by `run_attack`, which for each prompt

1. generates the plain prompt with the unlearned model (the prompt's seed) and asks the judge; if the
   target is already shown, the prompt counts as a success with no attack (as UnlearnDiffAtk's
   official code does: it returns before optimising) and nothing else is spent on it;
2. otherwise calls the attack, which searches (prompt tokens, a new embedding, noise) and checks
   candidates by generating with the unlearned model at the same seed and asking the same judge;
3. records the adversarial prompt (text anyone can type) or embedding, the image of the last check,
   whether the target came back, and the cost: seconds, optimisation iterations, images generated.

An attack declares what it is and what it needs, so that `igmu attacks` can list it and a wrong call
fails in one line before any work:

- mechanism, and access: "white-box" (gradients through the UNet), "text-encoder" (only the text
  encoder's outputs or gradients) or "black-box" (only sampling);
- needs_original: it uses the model before unlearning (its images, noise predictions or text encoder);
- needs_target_in_prompt: it edits or strips the target word inside the prompt;
- budgets: named presets of its Budget model. `official` holds the paper's / official code's numbers
  (each field cites its source in the attack's file), `fast` a documented CPU budget for benchmarks,
  `tiny` the smallest setting that exercises every code path (tests).

The success check of every attack is the task's judge on images of the UNLEARNED model at the
evaluation's sampling settings (steps, guidance); the paper-specific selection rules each attack's
official code uses instead (a CLIP similarity, a classifier ranking) are noted in its file.
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import UserError

ACCESS = {
    "white-box": "white-box (UNet gradients)",
    "text-encoder": "text encoder only",
    "black-box": "black-box (sampling only)",
}
BUDGETS = ("official", "fast", "tiny")


class Budget(BaseModel):
    """An attack's budget: the numbers that bound its search. Unknown fields are errors."""
    model_config = ConfigDict(extra="forbid")


@dataclass
class Found:
    """What an attack found for one prompt."""
    success: bool
    image: np.ndarray | None  # the image of the last candidate checked (uint8 H x W x 3)
    text: str | None = None  # adversarial prompt, as text anyone can type (None for an embedding attack)
    embedding: dict[str, torch.Tensor] | None = None  # {placeholder token: vector} for embedding attacks
    iterations: int = 0  # optimisation steps (gradient updates, GA generations, ...)
    checks: int = 0  # candidates judged
    extra: dict = field(default_factory=dict)  # attack-specific facts (final loss, which variant, ...)


class Session:
    """Everything an attack needs while it runs: the two models, the target, the judge and the sampling
    settings; it generates and judges candidates and counts the images it made."""

    def __init__(self, unlearned, original, target: str, shows: Callable[[np.ndarray], np.ndarray], settings,
                 seed: int = 0, kind: str | None = None):
        self.unlearned, self.original, self.target = unlearned, original, target
        self._shows, self.settings, self.seed, self.kind = shows, settings, int(seed), kind
        self.images_generated = 0

    # --- generation and judging ------------------------------------------------
    def shows(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._shows(images), dtype=bool).reshape(len(images))

    def generate(self, texts: list[str], seeds: list[int]) -> np.ndarray:
        """Images of the unlearned model for (text, seed) pairs, generated one at a time (a fixed UNet
        batch of 1, so an image does not depend on what else is checked)."""
        from ..generate import generate_images

        self.images_generated += len(texts)
        return generate_images(self.unlearned, list(texts), [int(s) for s in seeds], self.settings, batch_size=1)

    def check_text(self, text: str, seed: int) -> tuple[bool, np.ndarray]:
        img = self.generate([text], [seed])
        return bool(self.shows(img)[0]), img[0]

    def check_tokens(self, tokenizer, ids: torch.Tensor, positions: list[int], picked: torch.Tensor,
                     seed: int) -> tuple[bool, np.ndarray, str]:
        """Put the `picked` tokens at `positions` of `ids`, decode the prompt and check it: (shown, image, text)."""
        from .search import decode

        ids = ids.clone()
        ids[0, positions] = picked
        text = decode(tokenizer, ids)
        ok, img = self.check_text(text, seed)
        return ok, img, text

    @contextlib.contextmanager
    def learned_tokens(self, vectors: dict[str, torch.Tensor]):
        """While active, the unlearned model's tokenizer and text encoder know new tokens {token: vector}
        (diffusers' load_textual_inversion / unload_textual_inversion), so prompts that use them are text and
        generate through `generate`, an inference-time method's sampling hook included."""
        from transformers.utils import logging as tlog

        pipe, level = self.unlearned, tlog.get_verbosity()
        tokenizer = pipe.tokenizer  # unloading leaves a tokenizer that decodes differently: work on a copy
        pipe.tokenizer = copy.deepcopy(tokenizer)
        try:
            tlog.set_verbosity_error()  # resizing says how it initialises the new row, which is then overwritten
            try:
                with torch.random.fork_rng():  # resizing the embedding table draws from the global generator
                    pipe.load_textual_inversion({k: v.detach().float() for k, v in vectors.items()},
                                                token=list(vectors))
            finally:
                tlog.set_verbosity(level)
            yield
        finally:
            if len(pipe.tokenizer) > len(tokenizer):
                pipe.unload_textual_inversion(list(vectors))  # restores the text encoder's embedding table
            pipe.tokenizer = tokenizer

    # --- the original model's images of a prompt ---------------------------------
    def original_latents(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        """Clean latents the ORIGINAL model draws for (prompt, seed) pairs at the session's sampling settings:
        the same initial noise as `generate`, so they are latents of the images the original would show."""
        from ..diffusion.arch import adapter_for
        from ..diffusion.sampling import sample_latents
        from ..generate import initial_noise

        pipe, s = self.original, self.settings
        a = adapter_for(pipe)
        h, w = s.height or a.image_size[0], s.width or a.image_size[1]
        out = []
        for p, seed in zip(prompts, seeds):
            cond, uncond = a.prompt_conditioning([p], None)
            noise = initial_noise(pipe, seed, h, w)
            x, _ = sample_latents(a, None, cond, uncond, s.steps, s.guidance, noise=noise)
            out.append(x)
        self.images_generated += len(prompts)
        return torch.cat(out)


@dataclass
class WhiteBox:
    """A model frozen for gradient attacks: its architecture adapter (text encoding, the denoiser call), its
    training noise schedule and its token-embedding table."""
    adapter: Any
    text_encoder: Any
    unet: Any
    tokenizer: Any
    scheduler: Any
    table: torch.Tensor  # V x D, float32, detached


def white_box(pipe) -> WhiteBox:
    from ..diffusion.arch import adapter_for

    a = adapter_for(pipe)
    a.text_encoder.requires_grad_(False)
    a.unet.requires_grad_(False)
    return WhiteBox(a, a.text_encoder, a.unet, a.tokenizer, a.train_scheduler, a.token_embeddings().weight.detach().float())


class Attack:
    name: ClassVar[str]
    title: ClassVar[str]  # paper, venue
    source: ClassVar[str]  # official code the budgets and algorithm follow
    mechanism: ClassVar[str]  # one line
    access: ClassVar[str]  # a key of ACCESS
    needs_original: ClassVar[bool] = False
    needs_target_in_prompt: ClassVar[bool] = False
    Budget: ClassVar[type[Budget]] = Budget
    budgets: ClassVar[dict[str, dict]] = {}  # official / fast / tiny
    # Architecture support by adapter family (diffusion.arch.FAMILIES), as for methods: None = supported and
    # tested on a tiny pipeline of that family; a family not listed has not been ported yet.
    architectures: ClassVar[dict[str, str | None]] = {"sd": None}

    def check_architecture(self, pipe, role: str) -> None:
        """One line when this attack refuses, or has not been ported to, the family of the `role` model."""
        from ..diffusion.arch import FAMILIES, adapter_for

        a = adapter_for(pipe)
        if a.family not in self.architectures:
            runs = ", ".join(FAMILIES[f] for f, why in self.architectures.items() if why is None)
            raise UserError(f"attack {self.name} has not been ported to {a.label} yet (the {role} model is {a.label}; "
                            f"it runs on {runs})")
        if self.architectures[a.family] is not None:
            raise UserError(f"attack {self.name} does not support {a.label}: {self.architectures[a.family]}")

    def budget(self, name: str, kind: str | None = None) -> Budget:
        """The named preset, validated (a preset may depend on the concept kind, e.g. k tokens for nudity)."""
        if name not in BUDGETS:
            raise UserError(f"unknown budget {name!r} for attack {self.name}; budgets: {', '.join(BUDGETS)}")
        try:
            return self.Budget(**self.preset(name, kind))
        except ValidationError as e:  # a preset is code, not user input: a bug, but still one line
            raise UserError(f"attack {self.name}: bad {name} budget: {str(e).splitlines()[0]}") from None

    def preset(self, name: str, kind: str | None) -> dict:
        return dict(self.budgets[name])

    def cost(self, b: Budget) -> str:
        """What one attacked prompt costs at most, in model calls (for `igmu attacks`)."""
        return ""

    def check(self, session: Session, prompts: list[str]) -> None:
        """Raise UserError when this attack cannot run on these models or prompts."""

    def prepare(self, session: Session, prompts: list[str], seeds: list[int], b: Budget) -> Any:
        """Work shared by all prompts of one run (e.g. a learned embedding); its time is reported as shared."""
        return None

    def attack(self, session: Session, prompt: str, seed: int, b: Budget, shared: Any) -> Found:
        raise NotImplementedError


REGISTRY: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    REGISTRY[cls.name] = cls
    return cls


MODULES = ("unlearndiffatk", "p4d", "ringabell", "cce", "mma", "noiseprobe")  # one file per attack


def load_all() -> dict[str, type[Attack]]:
    """Import every attack module (each registers itself); the registry."""
    import importlib

    for m in MODULES:
        importlib.import_module(f"{__package__}.{m}")
    return REGISTRY


def get_attack(name: str) -> Attack:
    load_all()
    if name not in REGISTRY:
        raise UserError(f"unknown attack {name!r}; attacks: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]()


def parse_attack_specs(text: str | list[str]) -> list[tuple[str, str]]:
    """'unlearndiffatk:fast,ringabell:official' (or a list of such items) -> [(attack, budget)], validated."""
    items = text if isinstance(text, list) else [x for x in str(text).split(",")]
    out = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        name, _, budget = item.partition(":")
        name, budget = name.strip(), (budget.strip() or "fast")
        get_attack(name).budget(budget)
        out.append((name, budget))
    if len(set(out)) != len(out):
        raise UserError(f"attack {out[[out.count(x) for x in out].index(2)][0]!r} is listed twice with the same budget")
    return out


# --- checks shared by the attacks ----------------------------------------------------------
def words_in(text: str) -> list[str]:
    import re

    return re.findall(r"\w+", text.lower())


def contains_target(prompt: str, target: str) -> bool:
    """The target occurs in the prompt as whole words (case-insensitive)."""
    t, p = words_in(target), words_in(prompt)
    return bool(t) and any(p[i:i + len(t)] == t for i in range(len(p) - len(t) + 1))


def strip_target(prompt: str, target: str) -> str:
    """The prompt with every whole-word occurrence of the target removed (spaces collapsed)."""
    import re

    pat = r"\b" + r"\s+".join(re.escape(w) for w in target.split()) + r"\b"
    return re.sub(r"\s+", " ", re.sub(pat, " ", prompt, flags=re.IGNORECASE)).strip()


def check_differentiable(pipe, who: str, what: str = "unet") -> None:
    """One line when gradients cannot flow from the prompt to what the attack differentiates."""
    from ..diffusion.arch import adapter_for

    a = adapter_for(pipe)  # one line for a pipeline family igmu cannot drive
    a.token_embeddings()  # raises when the text encoder has no token-embedding table
    if what == "unet":
        if not any(n.endswith("attn2") and hasattr(m, "to_k") for n, m in a.unet.named_modules()):
            raise UserError(f"{who} differentiates the UNet's noise prediction with respect to the prompt, and this "
                            "UNet has no cross-attention (attn2): the prompt does not reach it")


def check_pair(unlearned, original, who: str) -> None:
    """The attacks that use both models feed the same token ids to both: their tokenizers must agree."""
    a, b = unlearned.tokenizer, original.tokenizer
    if len(a) != len(b) or a.model_max_length != b.model_max_length or a.get_vocab() != b.get_vocab():
        raise UserError(f"{who} needs the original and the unlearned model to share a tokenizer; these two differ")


# --- running an attack ------------------------------------------------------------------------
def run_attack(name: str, unlearned, original, target: str, prompts: list[str], seeds: list[int], budget: str,
               shows: Callable[[np.ndarray], np.ndarray], settings, seed: int = 0, kind: str | None = None,
               progress: Callable | None = None) -> dict:
    """Run one attack on every prompt (see the module docstring). `shows(images)` is the judge: True where
    the target is shown. Returns {"attack", "budget", "budget_values", "shared_seconds", "records"}; each
    record holds an "_image" (uint8 array, the last checked image) that writers save and strip."""
    attack = get_attack(name)
    b = attack.budget(budget, kind)
    if not target or not target.strip():
        raise UserError("empty --target; give the erased concept as text, e.g. --target circle")
    if not prompts:
        raise UserError("no prompt to attack; give --prompt or --prompts")
    if len(seeds) != len(prompts):
        raise UserError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if attack.needs_original and original is None:
        raise UserError(f"attack {name} needs the original model (--original): {attack.mechanism}")
    if attack.needs_target_in_prompt:
        missing = [p for p in prompts if not contains_target(p, target)]
        if missing:
            raise UserError(f"attack {name} edits the target inside the prompt, and the prompt {missing[0]!r} "
                            f"does not contain the target {target!r}")
    session = Session(unlearned, original, target, shows, settings, seed, kind)
    attack.check_architecture(unlearned, "unlearned")
    if original is not None:
        attack.check_architecture(original, "original")
    attack.check(session, prompts)
    for p in prompts:
        n = len(unlearned.tokenizer(p).input_ids)
        if n > unlearned.tokenizer.model_max_length:
            raise UserError(f"prompt {p!r} is {n} tokens; this model takes at most {unlearned.tokenizer.model_max_length}")

    records, shared, shared_s, shared_cpu, shared_imgs = [], None, 0.0, 0.0, 0
    for p, s in zip(prompts, seeds):
        t0, c0, imgs0 = time.perf_counter(), time.process_time(), session.images_generated
        plain, img = session.check_text(p, s)
        rec = {"prompt": p, "seed": int(s), "success_no_attack": plain, "success": plain, "adversarial_prompt": None,
               "embedding": None, "iterations": 0, "checks": 1}
        if not plain:
            if shared is None:  # the shared work is done once, when the first prompt needs attacking,
                t1, c1, i1 = time.perf_counter(), time.process_time(), session.images_generated  # and reported
                with torch.enable_grad():  # once, not per prompt
                    shared = attack.prepare(session, prompts, seeds, b)
                shared = shared if shared is not None else False
                shared_s, shared_imgs = time.perf_counter() - t1, session.images_generated - i1
                shared_cpu = time.process_time() - c1
                t0, c0, imgs0 = t0 + shared_s, c0 + shared_cpu, imgs0 + shared_imgs
            with torch.enable_grad():
                found = attack.attack(session, p, s, b, shared)
            rec.update(success=bool(found.success), adversarial_prompt=found.text, iterations=int(found.iterations),
                       checks=1 + int(found.checks), **found.extra)
            if found.embedding is not None:
                rec["embedding"] = {k: v.detach().float().cpu() for k, v in found.embedding.items()}
            if found.image is not None:
                img = found.image
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        rec["cpu_seconds"] = round(time.process_time() - c0, 3)  # this process's CPU time: robust to a busy machine
        rec["images_generated"] = session.images_generated - imgs0
        rec["_image"] = img
        records.append(rec)
        if progress:
            progress(1)
    return {"attack": name, "budget": budget, "budget_values": b.model_dump(), "kind": kind,
            "shared_seconds": round(shared_s, 3), "shared_cpu_seconds": round(shared_cpu, 3), "shared_images": shared_imgs,
            "records": records}


def summary_cost(result: dict) -> dict:
    """Seconds per attacked prompt (own time plus the shared work spread over the prompts; wall clock, and CPU time
    of this process, which a busy machine inflates less), iterations and images."""
    recs = result["records"]
    n = max(len(recs), 1)
    cpu = [r["cpu_seconds"] for r in recs if "cpu_seconds" in r]
    return {"seconds_per_prompt": round((sum(r["seconds"] for r in recs) + result.get("shared_seconds", 0)) / n, 3),
            "cpu_seconds_per_prompt": round((sum(cpu) + result.get("shared_cpu_seconds", 0)) / n, 3) if cpu else None,
            "iterations_per_prompt": round(sum(r["iterations"] for r in recs) / n, 2),
            "images_per_prompt": round((sum(r["images_generated"] for r in recs) + result.get("shared_images", 0)) / n, 2),
            "n": len(recs)}
