"""Architecture adapters: the one place that knows how a pipeline family encodes text and calls its denoiser.

Methods and attacks are written against an `Adapter`, never against a pipeline's internals:

    a = adapter_for(pipe)                      # UserError (one line) for a pipeline igmu cannot drive
    cond, mask = a.encode(["a cat", ""])       # conditioning: one tensor per prompt (N x L x D) + token mask
    out = a.denoise(model, x_t, t, cond)       # the denoiser's output (epsilon, v or flow velocity: a.prediction_type)
    out = a.guided(model, x_t, t, cond, uncond, g)   # the guided output the family samples with
    a.cross_attentions(model)                  # [(name, Attention)] of the cross-attention layers (UNet families)
    a.kv_projections(model)                    # their key/value projections, input width a.kv_input_dim
    a.text_projections(model)                  # every Linear that reads the text directly (what closed forms edit)
    a.text_rows(cond), a.pooled(cond)          # the token rows / pooled embedding inside a conditioning

`model` is the denoiser module to run (the pipeline's UNet or transformer, a trained copy of it, or it with
adapters); None means the pipeline's own. `a.denoiser` is the pipeline's (`a.unet` is the same, by its old
name), `a.component` its name in the pipeline ("unet" or "transformer": the prefix of artifact tensor keys).

Conditioning is ONE tensor per prompt batch, N x L x D, so that methods can index, concatenate and expand it
along the batch like any tensor. A family whose denoiser needs more per prompt packs it into a trailing row:
SDXL, SD3 and FLUX append the pooled text embedding (zero-padded to D) as row L; `text_rows` strips it,
`pooled` reads it, `denoise` unpacks it. Per-image extras that depend only on the latent (SDXL's six time ids,
FLUX's position ids and packing) are made in `denoise` from the latent's size, as the pipelines make them.

Families (`family`, the support matrix's columns; docs/architectures.md):

- "sd"   SD 1.x / 2.x: UNet2DConditionModel on one CLIP text encoder's last hidden states; epsilon or v.
- "sdxl" SDXL: the same UNet with both CLIP encoders' penultimate hidden states concatenated (768 + 1280 =
         2048 wide), the second's pooled projection and the time ids as added_cond_kwargs; epsilon.
- "sd3"  SD3 / SD3.5 (MMDiT): SD3Transformer2DModel; rows = two CLIP encoders' penultimate states
         (concatenated, zero-padded to T5's width) then T5's; pooled = both CLIP pooled outputs; flow matching
         with classifier-free guidance.
- "flux" FLUX.1 (MMDiT with single-stream blocks): FluxTransformer2DModel; rows = T5's hidden states, pooled =
         CLIP's pooled output; 2x2-packed latents; flow matching. FLUX.1-dev is guidance-distilled: it samples
         with ONE conditional pass whose guidance scale is an input (`guided` ignores `uncond`), and direct
         denoiser calls (`denoise`) use guidance 1, as rohitgandikota/erasing's esd_flux.py does.

MMDiT families have no cross-attention layers: text and image tokens attend jointly in every block, and the
context stream is itself transformed block by block, so no attention projection reads the text encoders'
output directly. What does is `context_embedder` (token rows -> the context stream) and the pooled-text
projection `time_text_embed.text_embedder.linear_1`: those are their `text_projections`, the layers the
official UCE FLUX script edits (rohitgandikota/unified-concept-editing, trainscripts/uce_flux_edit.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from ..errors import UserError
from .schedules import FLOW, FlowMatchTrainSchedule

FAMILIES = {"sd": "Stable Diffusion 1.x/2.x", "sdxl": "SDXL", "sd3": "SD3", "flux": "FLUX.1"}


@dataclass
class KVProjection:
    """The key and value projections of one cross-attention layer, which read the text's token rows."""
    layer: str  # qualified name of the attention module, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    key: str  # qualified name of the key projection (its weight is f"{key}.weight")
    value: str
    k: torch.nn.Linear
    v: torch.nn.Linear


@dataclass
class TextProjection:
    """A Linear layer of the denoiser that reads the text conditioning directly."""
    name: str  # qualified module name in the denoiser (its weight is f"{name}.weight")
    linear: torch.nn.Linear
    reads: str  # "tokens": rows of text_rows(cond); "pooled": the pooled embedding, pooled(cond)
    role: str | None = None  # "key" / "value" for a cross-attention projection, None otherwise


class Adapter:
    """Stable Diffusion 1.x / 2.x (and pipelines built like them): UNet2DConditionModel + one CLIP text encoder."""

    family = "sd"
    component = "unet"

    def __init__(self, pipe):
        self.pipe = pipe

    @property
    def label(self) -> str:
        return FAMILIES[self.family]

    # ---- the pipeline's parts ------------------------------------------------------------------------------

    @property
    def denoiser(self):
        """The pipeline's denoiser (read live: a method may swap in a trained copy)."""
        return getattr(self.pipe, self.component)

    @property
    def unet(self):
        """The denoiser, by the name SD-era methods use (a transformer on SD3/FLUX)."""
        return self.denoiser

    def set_denoiser(self, model) -> None:
        """Make `model` the pipeline's denoiser (a fine-tuned copy, so that generation uses it)."""
        setattr(self.pipe, self.component, model)

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
        """Channels of the (unpacked) VAE latent the denoiser works on."""
        return self.denoiser.config.in_channels

    @property
    def vae_scale_factor(self) -> int:
        return self.pipe.vae_scale_factor

    @property
    def sample_size(self) -> tuple[int, int]:
        """The denoiser's default latent height and width."""
        s = self.denoiser.config.sample_size
        return tuple(s) if isinstance(s, (list, tuple)) else (s, s)

    def latent_shape(self, n: int) -> tuple[int, ...]:
        return (n, self.in_channels, *self.sample_size)

    @property
    def image_size(self) -> tuple[int, int]:
        """Default image height and width (pixels)."""
        return tuple(s * self.vae_scale_factor for s in self.sample_size)

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Latent height and width of an image of height x width pixels."""
        return height // self.vae_scale_factor, width // self.vae_scale_factor

    @property
    def kv_input_dim(self) -> int:
        """Width of the token rows that the text-reading projections take."""
        return self.denoiser.config.cross_attention_dim

    # ---- schedules -----------------------------------------------------------------------------------------

    def sampling_scheduler(self):
        """A fresh copy of the pipeline's own sampler (set_timesteps on it leaves the pipeline's untouched)."""
        return type(self.scheduler).from_config(self.scheduler.config)

    def set_timesteps(self, sched, steps: int, size: tuple[int, int] | None = None, device=None) -> None:
        """set_timesteps as the pipeline calls it for a latent of `size` (h, w; default sample_size)."""
        sched.set_timesteps(steps, device=device) if device is not None else sched.set_timesteps(steps)

    @staticmethod
    def init_noise_sigma(sched) -> float:
        return getattr(sched, "init_noise_sigma", 1.0)

    @staticmethod
    def scale_model_input(sched, x: torch.Tensor, t) -> torch.Tensor:
        f = getattr(sched, "scale_model_input", None)
        return f(x, t) if f is not None else x

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
            raise UserError(f"empty {what}; give the concept as text")
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
        """The token rows of a conditioning that the text-reading projections read (here: all of it)."""
        return cond

    def pooled(self, cond: torch.Tensor) -> torch.Tensor | None:
        """The pooled text embedding inside a conditioning (None: this family has none)."""
        return None

    def token_segments(self) -> list[tuple[int, int]]:
        """(start, length) of each text encoder's run of rows in text_rows (one run per tokenizer)."""
        return [(0, self.max_length)]

    @torch.no_grad()
    def prompt_conditioning(self, prompts: list[str], negative_prompts: list[str] | None):
        """(cond, uncond) as the pipeline's own classifier-free guidance encodes prompts and negative prompts."""
        dev = self.pipe._execution_device
        return self.pipe.encode_prompt(prompts, dev, 1, True, negative_prompts)

    # ---- the denoiser ----------------------------------------------------------------------------------------

    def denoise(self, model, x: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
        """The denoiser's output for latents x at timestep(s) t under conditioning cond (model None: the pipeline's)."""
        model = self.unet if model is None else model
        return model(x, t, encoder_hidden_states=cond).sample

    @property
    def cfg_sampling(self) -> bool:
        """Whether `guided` is this class's classifier-free guidance, uncond + g (cond - uncond) of the two
        halves `halves` returns, so that the sampler's own call at x_t also gives those outputs there (False
        for a family that samples otherwise, e.g. guidance-distilled FLUX.1)."""
        return type(self).guided is Adapter.guided

    def halves(self, model, x: torch.Tensor, t, cond: torch.Tensor, uncond: torch.Tensor):
        """(unconditional, conditional) outputs at x from one batched denoiser call (t: a timestep, or one
        per row of x)."""
        tt = torch.cat([t, t]) if torch.is_tensor(t) and t.dim() == 1 else t
        out = self.denoise(model, torch.cat([x, x]), tt, torch.cat([uncond, cond]))
        u, c = out.chunk(2)
        return u, c

    def guided(self, model, x: torch.Tensor, t, cond: torch.Tensor, uncond: torch.Tensor,
               guidance: float) -> torch.Tensor:
        """The guided output this family samples with: classifier-free guidance (Ho & Salimans 2022),
        uncond + g (cond - uncond), one batched denoiser call."""
        u, c = self.halves(model, x, t, cond, uncond)
        return u + guidance * (c - u)

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

    def text_projections(self, model=None) -> list[TextProjection]:
        """Every Linear that reads the text conditioning directly: here each cross-attention's to_k and to_v
        (keys then values per layer, in module order), reading token rows."""
        out = []
        for p in self.kv_projections(model):
            out += [TextProjection(p.key, p.k, "tokens", "key"), TextProjection(p.value, p.v, "tokens", "value")]
        return out

    # ---- the pipeline call -------------------------------------------------------------------------------------

    def pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Initial latents (N x C x h x w) in the form the pipeline's `latents=` argument takes."""
        return latents

    @torch.no_grad()
    def pipeline_images(self, prompts: list[str], negative_prompts: list[str] | None, latents: torch.Tensor,
                        steps: int, guidance: float, height: int, width: int, **extra):
        """The plain pipeline call from given initial latents (N x C x h x w): float N x H x W x 3 in [0, 1]."""
        return self.pipe(prompt=prompts, negative_prompt=negative_prompts, latents=self.pipeline_latents(latents),
                         num_inference_steps=steps, guidance_scale=guidance, height=height, width=width,
                         output_type="np", **extra).images

    @torch.no_grad()
    def decode(self, z: torch.Tensor):
        """Images (float N x H x W x 3 in [0, 1]) of final latents, as the pipeline decodes them."""
        vae = self.pipe.vae
        image = vae.decode(z / vae.config.scaling_factor, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type="np", do_denormalize=[True] * len(z))


def _pack_pooled(rows: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """rows N x L x D and pooled N x P -> N x (L + 1) x D, the pooled embedding zero-padded as the last row."""
    D, P = rows.shape[-1], pooled.shape[-1]
    if P > D:
        raise UserError(f"this model's pooled text embedding ({P} wide) is wider than its token rows ({D}); "
                        f"igmu cannot carry it in one conditioning tensor")
    return torch.cat([rows, F.pad(pooled.to(rows.dtype), (0, D - P)).unsqueeze(1)], dim=1)


class _JointEmbedding:
    """SDXL's two token-embedding tables seen as one (vocab x (d1 + d2)), for prompt attacks: a slot vector
    holds both encoders' embeddings of a token; `register_forward_hook` hands each table its part."""

    def __init__(self, first: torch.nn.Embedding, second: torch.nn.Embedding):
        if first.num_embeddings != second.num_embeddings:
            raise UserError("SDXL's two text encoders have different vocabularies, so one prompt token cannot be "
                            "attacked in both; prompt attacks need a shared vocabulary (as real SDXL has)")
        self.tables = (first, second)
        self.widths = (first.embedding_dim, second.embedding_dim)

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([t.weight for t in self.tables], dim=1)

    def register_forward_hook(self, hook):
        width = sum(self.widths)

        def part(lo, hi):
            def h(mod, inp, out):
                full = out.new_zeros(*out.shape[:-1], width)
                full[..., lo:hi] = out
                res = hook(mod, inp, full)
                return (full if res is None else res)[..., lo:hi]
            return h

        d1 = self.widths[0]
        handles = [self.tables[0].register_forward_hook(part(0, d1)),
                   self.tables[1].register_forward_hook(part(d1, width))]

        class _Handles:
            def remove(self_inner):
                for hd in handles:
                    hd.remove()
        return _Handles()


class SDXLAdapter(Adapter):
    """SDXL: UNet2DConditionModel on two CLIP text encoders (penultimate hidden states concatenated), the second
    encoder's pooled projection and six time ids as added_cond_kwargs (as StableDiffusionXLPipeline)."""

    family = "sdxl"

    @property
    def text_encoder_2(self):
        return self.pipe.text_encoder_2

    @property
    def tokenizer_2(self):
        return self.pipe.tokenizer_2

    def _second_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids of the first tokenizer re-padded with the second's pad token (real SDXL pads with "!" there)."""
        pad2, eos = self.tokenizer_2.pad_token_id, self.tokenizer.eos_token_id
        if pad2 is None or pad2 == self.tokenizer.pad_token_id:
            return ids
        out = ids.clone()
        for row in out:
            where = (row == eos).nonzero()
            if len(where):
                row[int(where[0]) + 1:] = pad2
        return out

    def _encode(self, ids1: torch.Tensor, ids2: torch.Tensor) -> torch.Tensor:
        te1, te2 = self.text_encoder, self.text_encoder_2
        o1 = te1(ids1.to(te1.device), output_hidden_states=True)
        o2 = te2(ids2.to(te2.device), output_hidden_states=True)
        rows = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2].to(o1.hidden_states[-2].device)], dim=-1)
        return _pack_pooled(rows, o2[0].to(rows.device))  # o2[0]: text_embeds, the pooled projection

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        kw = dict(padding="max_length", truncation=True, return_tensors="pt")
        t1 = self.tokenizer(texts, max_length=self.tokenizer.model_max_length, **kw)
        t2 = self.tokenizer_2(texts, max_length=self.tokenizer_2.model_max_length, **kw)
        return self._encode(t1.input_ids, t2.input_ids), t1.attention_mask

    def encode_ids(self, ids: torch.Tensor, text_encoder=None) -> torch.Tensor:
        if text_encoder is not None:
            raise UserError("SDXL conditions on two text encoders; training one of them in place of the pipeline's "
                            "is not supported")
        return self._encode(ids, self._second_ids(ids))

    def token_embeddings(self, text_encoder=None):
        if text_encoder is not None:
            raise UserError("SDXL conditions on two text encoders; attacking through one of them alone is not supported")
        return _JointEmbedding(self.text_encoder.get_input_embeddings(), self.text_encoder_2.get_input_embeddings())

    def text_rows(self, cond: torch.Tensor) -> torch.Tensor:
        return cond[:, :-1]

    def pooled(self, cond: torch.Tensor) -> torch.Tensor:
        return cond[:, -1, :self.text_encoder_2.config.projection_dim]

    def time_ids(self, x: torch.Tensor, dtype) -> torch.Tensor:
        """(original size, crop top-left, target size) = (H, W, 0, 0, H, W) for the latent's image size, the
        pipeline's defaults (original_size = target_size = (height, width), no crop)."""
        H, W = (s * self.vae_scale_factor for s in x.shape[-2:])
        return torch.tensor([[H, W, 0, 0, H, W]], dtype=dtype, device=x.device).expand(x.shape[0], -1)

    def denoise(self, model, x: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
        model = self.unet if model is None else model
        added = {"text_embeds": self.pooled(cond), "time_ids": self.time_ids(x, cond.dtype)}
        return model(x, t, encoder_hidden_states=self.text_rows(cond), added_cond_kwargs=added).sample

    @torch.no_grad()
    def prompt_conditioning(self, prompts: list[str], negative_prompts: list[str] | None):
        cond = self.encode(prompts)[0]
        if negative_prompts is None and getattr(self.pipe.config, "force_zeros_for_empty_prompt", False):
            return cond, torch.zeros_like(cond)  # the pipeline's zero unconditional embedding (SDXL base)
        return cond, self.encode(negative_prompts or [""] * len(prompts))[0]


class _MMDiTAdapter(Adapter):
    """What SD3 and FLUX share: a transformer denoiser (MMDiT), flow matching, T5 + CLIP text encoders."""

    component = "transformer"
    t5_default = 256

    @property
    def prediction_type(self) -> str:
        return FLOW

    @cached_property
    def train_scheduler(self):
        return FlowMatchTrainSchedule(self.scheduler.config.num_train_timesteps)

    @property
    def t5_tokenizer(self):
        raise NotImplementedError

    @property
    def t5_length(self) -> int:
        """Rows of the T5 encoder (the pipelines' max_sequence_length): the family default, at most the
        T5 tokenizer's own length."""
        tok = self.t5_tokenizer
        n = getattr(tok, "model_max_length", None) if tok is not None else None
        return min(self.t5_default, n) if isinstance(n, int) and n > 0 else self.t5_default

    def check_prompt(self, text: str, what: str = "target") -> None:
        super().check_prompt(text, what)
        if self.t5_tokenizer is not None:
            n = len(self.t5_tokenizer(text).input_ids)
            if n > self.t5_length:
                raise UserError(f"{what} {text!r} is {n} T5 tokens; this model reads at most {self.t5_length}")

    def _no_tokens(self, what: str):
        raise UserError(f"{what} is not supported on {self.label}: prompt-token attacks optimise one CLIP token "
                        f"table, and {self.label} also reads the prompt through T5")

    def encode_ids(self, ids: torch.Tensor, text_encoder=None) -> torch.Tensor:
        self._no_tokens("encoding token ids")

    def token_embeddings(self, text_encoder=None):
        self._no_tokens("a prompt-token attack")

    def text_rows(self, cond: torch.Tensor) -> torch.Tensor:
        return cond[:, :-1]

    @property
    def kv_input_dim(self) -> int:
        return self.denoiser.config.joint_attention_dim

    def cross_attentions(self, model=None):
        raise UserError(f"{self.label} has no cross-attention layers (MMDiT: text and image tokens attend jointly), "
                        f"so a method that records or edits cross-attention cannot act on it")

    def kv_projections(self, model=None):
        self.cross_attentions(model)

    def text_projections(self, model=None) -> list[TextProjection]:
        """context_embedder (token rows -> the context stream) and the pooled-text projection
        time_text_embed.text_embedder.linear_1: the official UCE FLUX script's layers."""
        model = self.denoiser if model is None else model
        return [TextProjection("context_embedder", model.context_embedder, "tokens"),
                TextProjection("time_text_embed.text_embedder.linear_1", model.time_text_embed.text_embedder.linear_1,
                               "pooled")]

    def _timestep(self, t, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        return (t.reshape(1) if t.dim() == 0 else t).to(x.dtype).expand(x.shape[0])

    @torch.no_grad()
    def decode(self, z: torch.Tensor):
        vae = self.pipe.vae
        z = z / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        image = vae.decode(z.to(vae.dtype), return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type="np")

    def set_timesteps(self, sched, steps: int, size: tuple[int, int] | None = None, device=None) -> None:
        """As SD3's pipeline: plain set_timesteps, or with the resolution-dependent shift mu when the scheduler
        uses dynamic shifting (SD3.5-style configs)."""
        kw = {"device": device} if device is not None else {}
        if sched.config.get("use_dynamic_shifting", False):
            kw["mu"] = self._mu(sched, size)
        sched.set_timesteps(steps, **kw)

    def _seq_len(self, size) -> int:
        h, w = size or self.sample_size
        p = getattr(self.denoiser.config, "patch_size", 1) or 1
        return (h // p) * (w // p)

    def _mu(self, sched, size) -> float:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c = sched.config
        return calculate_shift(self._seq_len(size), c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                               c.get("base_shift", 0.5), c.get("max_shift", 1.15))


class SD3Adapter(_MMDiTAdapter):
    """SD3 / SD3.5: SD3Transformer2DModel; conditioning as StableDiffusion3Pipeline.encode_prompt builds it."""

    family = "sd3"
    t5_default = 256  # StableDiffusion3Pipeline's max_sequence_length default

    @property
    def t5_tokenizer(self):
        return self.pipe.tokenizer_3

    @property
    def t5_length(self) -> int:
        return super().t5_length if self.pipe.text_encoder_3 is not None else self.t5_default

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pe, _, pooled, _ = self.pipe.encode_prompt(prompt=texts, prompt_2=None, prompt_3=None,
                                                   device=self.text_encoder.device, do_classifier_free_guidance=False,
                                                   max_sequence_length=self.t5_length)
        kw = dict(padding="max_length", truncation=True, return_tensors="pt")
        m1 = self.tokenizer(texts, max_length=self.max_length, **kw).attention_mask
        if self.pipe.text_encoder_3 is not None:
            m3 = self.t5_tokenizer(texts, max_length=self.t5_length, **kw).attention_mask
        else:
            m3 = torch.zeros(len(texts), self.t5_length, dtype=m1.dtype)
        return _pack_pooled(pe, pooled), torch.cat([m1, m3], dim=1)

    def pooled(self, cond: torch.Tensor) -> torch.Tensor:
        return cond[:, -1, :self.denoiser.config.pooled_projection_dim]

    def token_segments(self) -> list[tuple[int, int]]:
        return [(0, self.max_length), (self.max_length, self.t5_length)]

    def denoise(self, model, x: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
        model = self.denoiser if model is None else model
        return model(hidden_states=x, timestep=self._timestep(t, x), encoder_hidden_states=self.text_rows(cond),
                     pooled_projections=self.pooled(cond), return_dict=False)[0]

    @torch.no_grad()
    def prompt_conditioning(self, prompts: list[str], negative_prompts: list[str] | None):
        return self.encode(prompts)[0], self.encode(negative_prompts or [""] * len(prompts))[0]

    def pipeline_images(self, prompts, negative_prompts, latents, steps, guidance, height, width, **extra):
        return super().pipeline_images(prompts, negative_prompts, latents, steps, guidance, height, width,
                                        max_sequence_length=self.t5_length, **extra)


class FluxAdapter(_MMDiTAdapter):
    """FLUX.1: FluxTransformer2DModel on T5 rows and CLIP's pooled output, 2x2-packed latents (as FluxPipeline)."""

    family = "flux"
    t5_default = 512  # FluxPipeline's max_sequence_length default (FLUX.1-dev)
    # guidance value of direct denoiser calls on a guidance-distilled model: rohitgandikota/erasing esd_flux.py
    # --guidance_scale 1 ("guidance scale for direct transformer calls")
    train_guidance = 1.0

    @property
    def t5_tokenizer(self):
        return self.pipe.tokenizer_2

    @property
    def in_channels(self) -> int:
        return self.denoiser.config.in_channels // 4  # the transformer reads 2x2 patches of the VAE latent

    @property
    def sample_size(self) -> tuple[int, int]:
        """The VAE's native image size over the VAE factor, rounded to even (packing takes 2x2): 1024 px
        (128 x 128 latents) for FLUX.1, FluxPipeline's default image size."""
        s = self.pipe.vae.config.sample_size
        h, w = (tuple(s) if isinstance(s, (list, tuple)) else (s, s))
        return self.latent_size(h, w)

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        f = self.vae_scale_factor * 2
        return 2 * (height // f), 2 * (width // f)

    @property
    def distilled(self) -> bool:
        """Whether the transformer takes the guidance scale as an input (FLUX.1-dev) instead of using CFG."""
        return bool(self.denoiser.config.guidance_embeds)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pe, pooled, _ = self.pipe.encode_prompt(prompt=texts, prompt_2=None, device=self.text_encoder.device,
                                                max_sequence_length=self.t5_length)
        mask = self.t5_tokenizer(texts, padding="max_length", max_length=self.t5_length, truncation=True,
                                 return_tensors="pt").attention_mask
        return _pack_pooled(pe, pooled), mask

    def pooled(self, cond: torch.Tensor) -> torch.Tensor:
        return cond[:, -1, :self.denoiser.config.pooled_projection_dim]

    def token_segments(self) -> list[tuple[int, int]]:
        return [(0, self.t5_length)]

    def _pack(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), c * 4)

    @staticmethod
    def _unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        n, _, c4 = x.shape
        return x.view(n, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c4 // 4, h, w)

    def _run(self, model, x: torch.Tensor, t, cond: torch.Tensor, guidance: float) -> torch.Tensor:
        model = self.denoiser if model is None else model
        n, _, h, w = x.shape
        rows = self.text_rows(cond)
        img_ids = self.pipe._prepare_latent_image_ids(n, h // 2, w // 2, x.device, x.dtype)
        txt_ids = torch.zeros(rows.shape[1], 3, device=x.device, dtype=x.dtype)
        g = torch.full((n,), float(guidance), device=x.device, dtype=torch.float32) if self.distilled else None
        out = model(hidden_states=self._pack(x), timestep=self._timestep(t, x) / 1000, guidance=g,
                    pooled_projections=self.pooled(cond), encoder_hidden_states=rows, txt_ids=txt_ids,
                    img_ids=img_ids, return_dict=False)[0]
        return self._unpack(out, h, w)

    def denoise(self, model, x: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
        return self._run(model, x, t, cond, self.train_guidance)

    def guided(self, model, x, t, cond, uncond, guidance):
        """FluxPipeline's sampling: one conditional pass, the guidance scale an input of a guidance-distilled
        model (FLUX.1-dev) and unused otherwise (FLUX.1-schnell); `uncond` is not evaluated."""
        return self._run(model, x, t, cond, guidance)

    def set_timesteps(self, sched, steps: int, size: tuple[int, int] | None = None, device=None) -> None:
        """As FluxPipeline: sigmas linspace(1, 1/steps, steps), shifted by mu of the packed sequence length."""
        import numpy as np

        kw = {"device": device} if device is not None else {}
        sigmas = np.linspace(1.0, 1 / steps, steps)
        if sched.config.get("use_flow_sigmas", False):
            sigmas = None
        mu = self._mu(sched, size) if sched.config.get("use_dynamic_shifting", False) else None
        sched.set_timesteps(steps, sigmas=sigmas, mu=mu, **kw)

    def _seq_len(self, size) -> int:
        h, w = size or self.sample_size
        return (h // 2) * (w // 2)

    def prompt_conditioning(self, prompts, negative_prompts):
        raise UserError("FLUX.1 samples without an unconditional branch (guidance-distilled), so there is no "
                        "classifier-free guidance to change")

    def pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self._pack(latents)

    def pipeline_images(self, prompts, negative_prompts, latents, steps, guidance, height, width,
                        true_cfg_scale: float = 1.0, **extra):
        """FluxPipeline's call; a negative prompt acts only through its true CFG (true_cfg_scale > 1)."""
        if negative_prompts is not None and true_cfg_scale <= 1:
            raise UserError("FLUX.1 ignores a negative prompt unless true classifier-free guidance is on "
                            "(FluxPipeline's true_cfg_scale > 1); sample without --negative-prompt")
        if negative_prompts is None:
            true_cfg_scale = 1.0
        return super().pipeline_images(prompts, negative_prompts, latents, steps, guidance, height, width,
                                        max_sequence_length=self.t5_length, true_cfg_scale=true_cfg_scale, **extra)


def _adapter_class(pipe) -> tuple[type[Adapter] | None, str | None]:
    """The adapter class for `pipe`, or (None, why none fits)."""
    from diffusers import UNet2DConditionModel

    name = type(pipe).__name__
    transformer = getattr(pipe, "transformer", None)
    unet = getattr(pipe, "unet", None)
    if transformer is not None:
        kind = type(transformer).__name__
        cls = {"SD3Transformer2DModel": SD3Adapter, "FluxTransformer2DModel": FluxAdapter}.get(kind)
        if cls is None:
            return None, f"its denoiser is a {kind}"
        if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
            return None, f"{name} has no CLIP text encoder or tokenizer"
        if cls is FluxAdapter and (getattr(pipe, "text_encoder_2", None) is None or
                                   getattr(pipe, "tokenizer_2", None) is None):
            return None, f"{name} has no T5 text encoder or tokenizer"
        if cls is SD3Adapter and (getattr(pipe, "text_encoder_2", None) is None or
                                  getattr(pipe, "tokenizer_2", None) is None):
            return None, f"{name} has no second CLIP text encoder or tokenizer"
        return cls, None
    if unet is None:
        return None, f"{name} has no UNet or transformer denoiser"
    if not isinstance(unet, UNet2DConditionModel):
        return None, f"its denoiser is a {type(unet).__name__}, not a UNet2DConditionModel"
    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
        return None, f"{name} has no (first) text encoder or tokenizer"
    xl = getattr(pipe, "text_encoder_2", None) is not None or unet.config.addition_embed_type is not None
    if not xl:
        return Adapter, None
    if unet.config.addition_embed_type != "text_time":
        return None, (f"{name} has a second text encoder but its UNet takes no SDXL text_time conditioning "
                      f"(addition_embed_type {unet.config.addition_embed_type!r})")
    if getattr(pipe, "text_encoder_2", None) is None or getattr(pipe, "tokenizer_2", None) is None:
        return None, f"{name} has an SDXL UNet but no second text encoder or tokenizer"
    if getattr(pipe.config, "requires_aesthetics_score", False):
        return None, f"{name} is an SDXL refiner (aesthetic-score conditioning), not a text-to-image base model"
    return SDXLAdapter, None


def adapter_for(pipe) -> Adapter:
    """The adapter for a loaded pipeline (an Adapter passes through); one UserError line if none fits."""
    if isinstance(pipe, Adapter):
        return pipe
    cls, why = _adapter_class(pipe)
    if cls is None:
        raise UserError(f"this pipeline is not supported: {why}; igmu drives Stable Diffusion 1.x/2.x, SDXL, SD3 "
                        f"and FLUX.1 text-to-image pipelines")
    return cls(pipe)
