"""Architecture adapters: the one place that knows how a pipeline family encodes text and calls its denoiser.

Methods and attacks are written against an `Adapter`, never against a pipeline's internals:

    a = adapter_for(pipe)                      # UserError (one line) for a pipeline igmu cannot drive
    cond, mask = a.encode(["a cat", ""])       # conditioning: one tensor per prompt (N x L x D) + token mask
    out = a.denoise(model, x_t, t, cond)       # the denoiser's output (epsilon or v: a.prediction_type)
    a.cross_attentions(model)                  # [(name, Attention)] of the cross-attention layers
    a.kv_projections(model)                    # the editable key/value projections, input width a.kv_input_dim
    a.text_rows(cond)                          # the token rows those projections read

`model` is the denoiser module to run (the pipeline's UNet, a trained copy of it, or the UNet with
adapters); None means the pipeline's own.

Conditioning is ONE tensor per prompt batch, N x L x D, so that methods can index, concatenate and
expand it along the batch like any tensor. An adapter for a family whose denoiser needs more per prompt
(SDXL: pooled text embeddings and time ids; SD3/FLUX: pooled embeddings) packs those extras into trailing
rows of that tensor and unpacks them in `denoise`; `text_rows` then strips them for the methods that read
token rows (closed-form K/V edits). Only SD1/SD2-style pipelines (a UNet2DConditionModel conditioned on
one CLIP text encoder, epsilon or v prediction) have an adapter so far.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from ..errors import UserError


@dataclass
class KVProjection:
    """The key and value projections of one cross-attention layer, which read the text's token rows."""
    layer: str  # qualified name of the attention module, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    key: str  # qualified name of the key projection (its weight is f"{key}.weight")
    value: str
    k: torch.nn.Linear
    v: torch.nn.Linear


class Adapter:
    """Stable Diffusion 1.x / 2.x (and pipelines built like them): UNet2DConditionModel + one CLIP text encoder."""

    family = "sd"

    def __init__(self, pipe):
        self.pipe = pipe

    # ---- the pipeline's parts ------------------------------------------------------------------------------

    @property
    def unet(self):
        """The pipeline's denoiser (read live: a method may swap in a trained copy)."""
        return self.pipe.unet

    @property
    def text_encoder(self):
        return self.pipe.text_encoder

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @property
    def max_length(self) -> int:
        return self.tokenizer.model_max_length

    @property
    def prediction_type(self) -> str:
        return getattr(self.scheduler.config, "prediction_type", "epsilon")

    @property
    def in_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def sample_size(self) -> tuple[int, int]:
        """The denoiser's default latent height and width."""
        s = self.unet.config.sample_size
        return tuple(s) if isinstance(s, (list, tuple)) else (s, s)

    def latent_shape(self, n: int) -> tuple[int, ...]:
        return (n, self.in_channels, *self.sample_size)

    @property
    def kv_input_dim(self) -> int:
        """Width of the token rows that the cross-attention key/value projections read."""
        return self.unet.config.cross_attention_dim

    def sampling_scheduler(self):
        """A fresh copy of the pipeline's own sampler (set_timesteps on it leaves the pipeline's untouched)."""
        return type(self.scheduler).from_config(self.scheduler.config)

    @cached_property
    def train_scheduler(self):
        """A DDPM scheduler with the pipeline's training noise schedule (forward noising at any t)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.scheduler.config)

    # ---- text ----------------------------------------------------------------------------------------------

    def token_ids(self, text: str, special: bool = True, pad: bool = False) -> list[int]:
        """Token ids of one text (truncated to the model's length; padded to it with pad=True)."""
        if not special:
            return self.tokenizer(text, add_special_tokens=False).input_ids
        kw = {"padding": "max_length"} if pad else {}
        return self.tokenizer(text, max_length=self.max_length, truncation=True, **kw).input_ids

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """N x L token ids, padded to the model's length."""
        return self.tokenizer(texts, padding="max_length", max_length=self.max_length, truncation=True,
                              return_tensors="pt").input_ids

    def check_prompt(self, text: str, what: str = "target") -> None:
        """A concept must be non-empty and fit the tokenizer's context."""
        if not text or not text.strip():
            raise UserError(f"empty {what}; give the concept as text, e.g. --target \"circle\"")
        n = len(self.tokenizer(text).input_ids)
        if n > self.max_length:
            raise UserError(f"{what} {text!r} is {n} tokens; this model's tokenizer takes at most {self.max_length}")

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning (N x L x D, on the text encoder's device) and attention masks (N x L) of texts."""
        ids = self.tokenizer(texts, padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")
        hs = self.text_encoder(ids.input_ids.to(self.text_encoder.device))[0]
        return hs, ids.attention_mask

    def encode_ids(self, ids: torch.Tensor, text_encoder=None) -> torch.Tensor:
        """Conditioning of token ids through `text_encoder` (default: the pipeline's); keeps autograd."""
        te = text_encoder if text_encoder is not None else self.text_encoder
        return te(ids.to(te.device))[0]

    def token_embeddings(self, text_encoder=None) -> torch.nn.Embedding:
        """The text encoder's token-embedding table (what prompt attacks optimise in)."""
        te = text_encoder if text_encoder is not None else self.text_encoder
        emb = te.get_input_embeddings()
        if not isinstance(emb, torch.nn.Embedding):
            raise UserError("this text encoder has no token-embedding table, so prompt tokens cannot be attacked")
        return emb

    def text_rows(self, cond: torch.Tensor) -> torch.Tensor:
        """The token rows of a conditioning that cross-attention keys/values read (here: all of it)."""
        return cond

    # ---- the denoiser ----------------------------------------------------------------------------------------

    def denoise(self, model, x: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
        """The denoiser's output for latents x at timestep(s) t under conditioning cond (model None: the pipeline's)."""
        model = self.unet if model is None else model
        return model(x, t, encoder_hidden_states=cond).sample

    def cross_attentions(self, model=None) -> list[tuple[str, torch.nn.Module]]:
        """(name, Attention) for every cross-attention (attn2) of the denoiser, in module order."""
        model = self.unet if model is None else model
        out = [(n, m) for n, m in model.named_modules() if n.endswith("attn2") and hasattr(m, "to_k")]
        out = [(n, m) for n, m in out if getattr(m, "is_cross_attention", True)]
        if not out:
            raise UserError("this model's UNet has no cross-attention layers (attn2), so this method cannot edit it")
        return out

    def kv_projections(self, model=None) -> list[KVProjection]:
        """The key/value projections of every cross-attention layer, in module order."""
        return [KVProjection(n, f"{n}.to_k", f"{n}.to_v", a.to_k, a.to_v) for n, a in self.cross_attentions(model)]


def _unsupported(pipe) -> str | None:
    """Why `pipe` has no adapter, or None when the SD1/SD2 adapter fits it."""
    from diffusers import UNet2DConditionModel

    name = type(pipe).__name__
    unet = getattr(pipe, "unet", None)
    if unet is None:
        what = "a transformer denoiser" if getattr(pipe, "transformer", None) is not None else "no UNet"
        return f"{name} has {what}"
    if not isinstance(unet, UNet2DConditionModel):
        return f"its denoiser is a {type(unet).__name__}, not a UNet2DConditionModel"
    if getattr(pipe, "text_encoder_2", None) is not None or unet.config.addition_embed_type is not None:
        return f"{name} conditions its UNet on more than one text encoder's hidden states (SDXL-style)"
    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
        return f"{name} has no text encoder or tokenizer"
    return None


def adapter_for(pipe) -> Adapter:
    """The adapter for a loaded pipeline (an Adapter passes through); one UserError line if none fits."""
    if isinstance(pipe, Adapter):
        return pipe
    why = _unsupported(pipe)
    if why:
        raise UserError(f"this pipeline is not supported: {why}; igmu drives Stable Diffusion 1.x/2.x-style "
                        f"pipelines (UNet2DConditionModel + one CLIP text encoder) so far")
    return Adapter(pipe)
