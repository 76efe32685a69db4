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

No hyper-parameters on models sampled with classifier-free guidance (SD 1.x/2.x, SDXL, SD3).

FLUX.1 is guidance-distilled: FluxPipeline samples with one conditional pass and ignores a negative
prompt unless its "true CFG" is on (true_cfg_scale > 1: a second pass on the negative prompt,
out = neg + s (cond - neg), on top of the distilled guidance). On FLUX the baseline samples that way at
true_cfg_scale (default 2.0: no published value exists for negative-prompt erasure on FLUX; 2.0 is what
diffusers' own test of FLUX true CFG uses, tests/pipelines/flux/test_pipeline_flux.py test_flux_true_cfg),
which doubles the transformer passes per step.
"""
from __future__ import annotations

from pydantic import Field

from ..diffusion.arch import adapter_for
from ..diffusion.sampling import pipeline_images
from ..errors import UserError
from .base import EraseRequest, Eraser, MethodConfig, register


def negative_prompts(user: list[str] | None, spec: dict, n: int) -> list[str]:
    """The negative prompt of each image: the artifact's, or "USER, artifact's" when the user gave one too."""
    return [", ".join(([u] if u else []) + [spec["negative_prompt"]]) for u in (user or [None] * n)]


class NegPromptConfig(MethodConfig):
    # FLUX.1 only (None elsewhere): FluxPipeline's true_cfg_scale for the negative-prompt pass; see the docstring
    true_cfg_scale: float | None = Field(None, gt=1)


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
    Config = NegPromptConfig
    architectures = {"sd": None, "sdxl": None, "sd3": None, "flux": None}
    family_defaults = {"flux": {"true_cfg_scale": 2.0}}  # see the module docstring

    def check(self, pipe, req: EraseRequest, cfg):
        a = adapter_for(pipe)
        if cfg.true_cfg_scale is not None and a.family != "flux":
            raise UserError(f"true_cfg_scale applies to FLUX.1 only; {a.label} samples with classifier-free guidance")
        for t in req.targets:
            a.check_prompt(t, "target")
        a.check_prompt(", ".join(req.targets), "negative prompt")

    def sampling(self, req: EraseRequest, cfg) -> dict:
        spec = {"type": self.sampling_type, "negative_prompt": ", ".join(req.targets)}
        if cfg.true_cfg_scale is not None:
            spec["true_cfg_scale"] = cfg.true_cfg_scale
        return spec

    def sampler(self, spec: dict):
        if not (isinstance(spec.get("negative_prompt"), str) and spec["negative_prompt"]):
            raise UserError("artifact's negative_prompt sampling has no negative prompt")

        extra = {"true_cfg_scale": float(spec["true_cfg_scale"])} if "true_cfg_scale" in spec else {}

        def sample(pipe, prompts, negative, latents, steps, guidance, height, width):
            return pipeline_images(pipe, prompts, negative_prompts(negative, spec, len(prompts)), latents, steps,
                                   guidance, height, width, **extra)
        return sample
