"""Negative prompt: the common inference-time baseline for concept erasure.

Classifier-free guidance normally extrapolates from the unconditional estimate
eps(z_t) = eps(z_t, "") towards the prompt's:

    eps~ = eps(z_t, c_n) + s_g (eps(z_t, c_p) - eps(z_t, c_n))

with c_n = "" for plain sampling. The negative-prompt baseline conditions that
branch on the concept instead (c_n = the target), so every step moves away
from the concept as well as towards the prompt. It is what diffusers'
`negative_prompt` argument does, and the baseline the SLD paper evaluates
against (Schramowski et al., CVPR 2023: the unconditional estimate replaced by
the safety concept's); ESD (Gandikota et al., ICCV 2023) distils this same
negative-guidance direction into the weights. Here the weights are untouched,
so anyone who samples without the artifact's negative prompt gets the concept back.

In igmu the targets, joined by ", ", become the negative prompt. If the user
also gives --negative-prompt, the two are combined as "USER, TARGETS" (see
negative_prompts below). Like every negative prompt, it has no
effect when classifier-free guidance is off (--guidance <= 1), because the
pipeline then never evaluates the unconditional branch.

No hyper-parameters.
"""
from __future__ import annotations

from ..diffusion.arch import adapter_for
from ..diffusion.sampling import pipeline_images
from ..errors import UserError
from .base import EraseRequest, Eraser, MethodConfig, register


def negative_prompts(user: list[str] | None, spec: dict, n: int) -> list[str]:
    """The negative prompt of each image: the artifact's, or "USER, artifact's" when the user gave one too."""
    return [", ".join(([u] if u else []) + [spec["negative_prompt"]]) for u in (user or [None] * n)]


@register
class NegativePrompt(Eraser):
    name = "negprompt"
    summary = "inference-time: the target(s) become the negative prompt of classifier-free guidance"
    changes = "no weights; the unconditional branch of CFG is conditioned on the target(s)"
    source = ("common baseline (diffusers negative_prompt); evaluated as one in Schramowski et al., "
              "Safe Latent Diffusion, CVPR 2023")
    multi_concept = True
    kind = "sampling"
    sampling_type = "negative_prompt"
    unet_passes_per_step = 2
    Config = MethodConfig

    def check(self, pipe, req: EraseRequest, cfg):
        a = adapter_for(pipe)
        for t in req.targets:
            a.check_prompt(t, "target")
        a.check_prompt(", ".join(req.targets), "negative prompt")

    def sampling(self, req: EraseRequest, cfg) -> dict:
        return {"type": self.sampling_type, "negative_prompt": ", ".join(req.targets)}

    def sampler(self, spec: dict):
        if not (isinstance(spec.get("negative_prompt"), str) and spec["negative_prompt"]):
            raise UserError("artifact's negative_prompt sampling has no negative prompt")

        def sample(pipe, prompts, negative, latents, steps, guidance, height, width):
            return pipeline_images(pipe, prompts, negative_prompts(negative, spec, len(prompts)), latents, steps,
                                   guidance, height, width)
        return sample
