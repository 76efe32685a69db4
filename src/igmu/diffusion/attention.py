"""Cross-attention hooks: recording the attention probabilities of every layer, handed to a sink (with
autograd, so a loss on them trains the denoiser: FMN, MACE, Receler); editing the value vectors each layer
reads from the text (AdaVD's value decomposition); and the layout of a layer's query pixels on the latent."""
from __future__ import annotations

import torch

from .arch import adapter_for


class _RecordingAttnProcessor:
    """diffusers' plain AttnProcessor computation, handing the attention probabilities
    (batch x heads x queries x keys, softmax over keys) of each call to `sink(name, probs)`.
    The probabilities keep their autograd graph, so a loss on them trains the UNet (FMN).
    With `edit_value`, the value vectors (batch x tokens x inner dim, before the head split) are replaced
    by `edit_value(name, value)` first."""

    def __init__(self, name: str, sink=None, edit_value=None):
        self.name, self.sink, self.edit_value = name, sink, edit_value

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
        value = attn.to_v(encoder_hidden_states)
        if self.edit_value is not None:
            value = self.edit_value(self.name, value)
        value = attn.head_to_batch_dim(value)
        probs = attn.get_attention_scores(attn.head_to_batch_dim(query), key, attention_mask)
        if self.sink is not None:
            self.sink(self.name, probs.unflatten(0, (-1, attn.heads)))  # head_to_batch_dim is batch-major
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class record_cross_attention:
    """Context manager: while active, every cross-attention layer of the denoiser (`model`, default the
    pipeline's) calls `sink(name, probs)` with its attention probabilities, probs: batch x heads x pixels x
    tokens (with autograd). The original attention processors are restored on exit."""

    def __init__(self, pipe, sink, model=None, edit_value=None):
        self.layers = adapter_for(pipe).cross_attentions(model)
        self.sink, self.edit_value = sink, edit_value

    def __enter__(self):
        self._old = [attn.processor for _, attn in self.layers]
        for name, attn in self.layers:
            attn.set_processor(_RecordingAttnProcessor(name, self.sink, self.edit_value))
        return [name for name, _ in self.layers]

    def __exit__(self, *exc):
        for (_, attn), old in zip(self.layers, self._old):
            attn.set_processor(old)
        return False


class edit_cross_attention_values(record_cross_attention):
    """Context manager: while active, every cross-attention layer of the denoiser reads the values
    `edit(name, value)` instead of its own to_v output (value: batch x text tokens x inner dim), with the
    rest of the attention computation unchanged. Restores the processors on exit."""

    def __init__(self, pipe, edit, model=None):
        super().__init__(pipe, None, model, edit_value=edit)


def attention_grid(q: int, size: tuple[int, int]) -> tuple[int, int]:
    """Height and width of a layer's q query pixels, for a latent of `size` (downsampled by a power of 2)."""
    f = (size[0] * size[1] / q) ** 0.5
    for h in (round(size[0] / f), int(size[0] // f), -(-size[0] // f)):
        h = max(1, int(h))
        if q % h == 0:
            return h, q // h
    raise ValueError(f"cannot lay out {q} attention pixels on a {size} latent")
