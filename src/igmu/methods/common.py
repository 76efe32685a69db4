"""Mechanics shared by several methods: prompt encoding, cross-attention discovery,
and the closed-form least-squares edit of projection matrices (UCE, and later MACE, RECE)."""
from __future__ import annotations

import inspect
import re

import torch

from ..errors import UserError


def check_prompt(pipe, text: str, what: str = "target") -> None:
    """A concept must be non-empty and fit the tokenizer's context."""
    if not text or not text.strip():
        raise UserError(f"empty {what}; give the concept as text, e.g. --target \"circle\"")
    tok = pipe.tokenizer
    n = len(tok(text).input_ids)
    if n > tok.model_max_length:
        raise UserError(f"{what} {text!r} is {n} tokens; this model's tokenizer takes at most {tok.model_max_length}")


# The generic retain set, used when a method needs retain prompts and no --preserve is given: simple prompts
# in the mini world's vocabulary (other shapes, colours and styles, and a person), plain English for Stable
# Diffusion as well. A prompt that shares a content word with a target is dropped (generic_retain).
GENERIC_RETAIN = [
    "a red square on a dark background",
    "a blue triangle on a light background",
    "a green dotted star on a dark background",
    "a yellow heart on a light background",
    "a purple outlined diamond on a dark background",
    "an orange checkered moon on a light background",
    "a blue cross on a light background",
    "a person on a dark background",
]
_STOPWORDS = {"a", "an", "the", "on", "of", "in", "with", "and", "background", "photo", "image", "picture"}


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOPWORDS}


def generic_retain(targets: list[str]) -> list[str]:
    """GENERIC_RETAIN minus the prompts that share a content word with a target."""
    banned = set().union(*(content_words(t) for t in targets))
    return [p for p in GENERIC_RETAIN if not content_words(p) & banned]


def anchor_text(req) -> str:
    """The anchor (surrogate) concept of a request: --anchor, or the empty prompt when none is given."""
    return req.anchor.strip() if req.anchor and req.anchor.strip() else ""


def check_request(pipe, req) -> None:
    """One-line errors for a request: targets, anchor and preserved concepts must be encodable, a target
    may not repeat, and the anchor may not be one of the targets."""
    for t in req.targets:
        check_prompt(pipe, t, "target")
    if len(set(req.targets)) != len(req.targets):
        raise UserError("the same --target is given twice")
    if req.anchor and req.anchor.strip():
        check_prompt(pipe, req.anchor, "anchor")
    for p in req.preserve:
        check_prompt(pipe, p, "preserved concept")
    if anchor_text(req) and anchor_text(req) in req.targets:
        raise UserError("the --anchor is one of the targets; anchor the target to a different concept")


def changed_tensors(named_params, before: dict, component: str = "unet") -> dict:
    """{"<component>.<name>": tensor} for the trained parameters whose value moved from `before[name]`."""
    return {f"{component}.{n}": p.detach().cpu().clone() for n, p in named_params
            if not torch.equal(p.detach().cpu(), before[n].detach().cpu())}


@torch.no_grad()
def encode(pipe, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Text-encoder hidden states (N x L x D) and attention masks (N x L), padded to the model's length."""
    tok = pipe.tokenizer
    ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    hs = pipe.text_encoder(ids.input_ids.to(pipe.text_encoder.device))[0]
    return hs, ids.attention_mask


def cross_attentions(unet) -> list[tuple[str, torch.nn.Module]]:
    """(name, Attention) for every cross-attention (attn2) in the UNet, in module order."""
    out = [(n, m) for n, m in unet.named_modules() if n.endswith("attn2") and hasattr(m, "to_k")]
    out = [(n, m) for n, m in out if getattr(m, "is_cross_attention", True)]
    if not out:
        raise UserError("this model's UNet has no cross-attention layers (attn2), so this method cannot edit it")
    return out


def closed_form_edit(W: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, keep: torch.Tensor | None,
                     lamb: float, erase_scale: float, preserve_scale: float) -> torch.Tensor:
    """argmin_W'  erase_scale * sum_i ||W' k_i - v_i||^2 + preserve_scale * sum_j ||W' c_j - W c_j||^2
    + lamb * ||W' - W||_F^2  (UCE, Gandikota et al. 2024, eq. 7), solved in closed form:

        W' = (lamb W + erase_scale V K^T + preserve_scale W C C^T) (lamb I + erase_scale K K^T + preserve_scale C C^T)^-1

    keys K: n x d_in (rows are k_i), values V: n x d_out, keep C: m x d_in.
    """
    W64 = W.double()
    K, V = keys.double(), values.double()
    mat1 = lamb * W64 + erase_scale * V.T @ K
    mat2 = lamb * torch.eye(W.shape[1], dtype=torch.float64) + erase_scale * K.T @ K
    if keep is not None and len(keep):
        C = keep.double()
        mat1 = mat1 + preserve_scale * (W64 @ C.T) @ C
        mat2 = mat2 + preserve_scale * C.T @ C
    return torch.linalg.solve(mat2, mat1.T).T.to(W.dtype)  # mat1 @ inv(mat2), solved stably


def trainable(unet, which: str) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters of the Linear/Conv2d modules that ESD-style fine-tuning updates.

    'xattn': inside cross-attention (attn2); 'noxattn': everything else; 'full': all;
    'xattn-strict': only attn2 to_k/to_v (names as in the official ESD code).
    """
    out = []
    for name, module in unet.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        inside = ".attn2." in f".{name}."
        pick = {"xattn": inside, "noxattn": not inside, "full": True,
                "xattn-strict": inside and name.rsplit(".", 1)[-1] in ("to_k", "to_v")}[which]
        if pick:
            out += [(f"{name}.{n}", p) for n, p in module.named_parameters(recurse=False)]
    if not out:
        raise UserError(f"this model has no parameters of kind {which!r} to fine-tune")
    return out


def cfg_noise(unet, x, t, cond, uncond, guidance: float) -> torch.Tensor:
    """Classifier-free guided model output: uncond + g (cond - uncond)."""
    out = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
    u, c = out.chunk(2)
    return u + guidance * (c - u)


@torch.no_grad()
def sample_latents(pipe, unet, cond, uncond, steps: int, guidance: float, generator=None, noise=None,
                   stop: int | None = None, on_step=None):
    """Classifier-free-guided sampling with a fresh copy of the pipeline's own scheduler.

    Starts from `noise` if given, else from noise drawn with `generator`; runs the first `stop`
    of `steps` steps (all when None), calling `on_step(k, t)` before each model call (e.g. to
    label recorded activations). Returns (latents, scheduler). The one sampling loop that
    ESD, SPM, FMN, MACE and ConceptPrune use to draw latents of a concept.
    """
    sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    if noise is None:
        size = unet.config.sample_size
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        noise = torch.randn((cond.shape[0], unet.config.in_channels, *size), generator=generator)
    x = noise.to(cond.device, cond.dtype) * sched.init_noise_sigma
    extra = {"generator": generator} if generator is not None and "generator" in inspect.signature(
        sched.step).parameters else {}
    for k, t in enumerate(sched.timesteps[:stop]):
        if on_step is not None:
            on_step(k, t)
        eps = cfg_noise(unet, sched.scale_model_input(x, t), t, cond, uncond, guidance)
        x = sched.step(eps, t, x, **extra).prev_sample
    return x, sched


def sample_until(pipe, unet, cond, uncond, steps: int, stop: int, guidance: float, generator) -> tuple:
    """Run the pipeline's sampler for `stop` of `steps` steps from seeded noise.

    Returns (x_t, t): the partially denoised latents and the timestep they sit at.
    This is how ESD and its descendants draw training latents of the concept.
    """
    x, sched = sample_latents(pipe, unet, cond, uncond, steps, guidance, generator, stop=stop)
    t = sched.timesteps[stop]
    return sched.scale_model_input(x, t), t


def token_positions(ids: list[int], sub: list[int]) -> list[int]:
    """Positions in `ids` covered by every occurrence of the token sequence `sub`."""
    out = []
    for i in range(len(ids) - len(sub) + 1):
        if sub and ids[i:i + len(sub)] == sub:
            out += range(i, i + len(sub))
    return out


class _RecordingAttnProcessor:
    """diffusers' plain AttnProcessor computation, handing the attention probabilities
    (batch x heads x queries x keys, softmax over keys) of each call to `sink(name, probs)`.
    The probabilities keep their autograd graph, so a loss on them trains the UNet (FMN)."""

    def __init__(self, name: str, sink):
        self.name, self.sink = name, sink

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        ndim = hidden_states.ndim
        if ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, seq, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(attn.head_to_batch_dim(query), key, attention_mask)
        self.sink(self.name, probs.unflatten(0, (-1, attn.heads)))  # head_to_batch_dim is batch-major
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class record_cross_attention:
    """Context manager: while active, every cross-attention (attn2) of `unet` calls `sink(name, probs)`
    with its attention probabilities, probs: batch x heads x pixels x tokens (with autograd).
    The original attention processors are restored on exit."""

    def __init__(self, unet, sink):
        self.layers = cross_attentions(unet)
        self.sink = sink

    def __enter__(self):
        self._old = [attn.processor for _, attn in self.layers]
        for name, attn in self.layers:
            attn.set_processor(_RecordingAttnProcessor(name, self.sink))
        return [name for name, _ in self.layers]

    def __exit__(self, *exc):
        for (_, attn), old in zip(self.layers, self._old):
            attn.set_processor(old)
        return False


def train_scheduler(pipe):
    """A DDPM scheduler with the pipeline's training noise schedule (for adding noise at any t)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def diffusion_target(sched, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict at (x0, noise, t): the noise (epsilon models) or v (v-prediction)."""
    kind = getattr(sched.config, "prediction_type", "epsilon")
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return sched.get_velocity(x0, noise, t)
    raise UserError(f"prediction type {kind!r} is not supported (epsilon or v_prediction)")


def diffusion_loss(unet, sched, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator,
                   t: torch.Tensor | None = None, reduce: bool = True) -> torch.Tensor:
    """The standard denoising loss  E_{t, eps} || model(x_t, t, c) - target ||^2  (Ho et al. 2020),
    one random t and noise per latent. x0: clean latents (B x C x h x w), cond: B x L x D.
    reduce=False gives one loss per latent. The loss that CA, SalUn, EraseDiff, SA, ScissorHands
    train with and that UnlearnDiffAtk / AdvUnlearn attack with."""
    n_t = sched.config.num_train_timesteps
    if t is None:
        t = torch.randint(0, n_t, (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    t = t.to(x0.device)
    xt = sched.add_noise(x0, noise, t)
    pred = unet(xt, t, encoder_hidden_states=cond).sample
    err = (pred.float() - diffusion_target(sched, x0, noise, t).float()) ** 2
    return err.mean() if reduce else err.flatten(1).mean(1)


@torch.no_grad()
def concept_latents(pipe, unet, prompts: list[str], n: int, steps: int, guidance: float, seed: int,
                    batch: int = 32) -> tuple[torch.Tensor, list[int]]:
    """Clean latents x0 of n samples per prompt drawn with `unet` (the frozen original model):
    the "images of the concept" that fine-tuning methods and attacks train on. Returns
    (latents N x C x h x w, prompt index of each)."""
    which = [i for i, _ in enumerate(prompts) for _ in range(n)]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for s in range(0, len(which), batch):
        idx = which[s:s + batch]
        embs, _ = encode(pipe, [prompts[i] for i in idx] + [""])
        cond, null = embs[:-1], embs[-1:].expand(len(idx), -1, -1)
        x, _ = sample_latents(pipe, unet, cond, null, steps, guidance, gen)
        out.append(x)
    return torch.cat(out), which
