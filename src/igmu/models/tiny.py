"""Tiny randomly initialised text-to-image pipelines built from configs.

For tests and code-path checks without any download. Each is a smaller instance of the same diffusers and
transformers classes as the real model, so igmu runs the same code on it:

    "sd1"   SD 1.x: UNet2DConditionModel + one CLIPTextModel, conv projections, epsilon, heads as one number
    "sd2"   SD 2.x: linear projections, per-block head dims, v-prediction
    "sdxl"  SDXL: two CLIP text encoders (the second a CLIPTextModelWithProjection giving the pooled
            embedding), their penultimate hidden states concatenated (cross-attention width 64 = 32 + 32),
            added conditioning "text_time" (pooled embedding + 6 time ids), EulerDiscreteScheduler
    "sd3"   SD3 (MMDiT): SD3Transformer2DModel, two CLIPTextModelWithProjection + a T5EncoderModel,
            flow matching (FlowMatchEulerDiscreteScheduler, shift 3)
    "flux"  FLUX.1-dev-like: FluxTransformer2DModel (double- and single-stream blocks, guidance embedding),
            CLIPTextModel (pooled) + T5EncoderModel, packed 2x2 latents, dynamic-shift flow matching

The CLIP tokenizers are the mini world's; the T5 tokenizer is built offline from the same words
(models.tokenizer.build_t5_tokenizer). Save a pipeline with save_pretrained and load it by path as any
diffusers folder.
"""
from __future__ import annotations

import torch

KINDS = ("sd1", "sd2", "sdxl", "sd3", "flux")


def _clip(tok, hidden: int, projection: bool = False, act: str = "gelu", projection_dim: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=32, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, hidden_act=act,
                         projection_dim=projection_dim or hidden)
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def _t5(tok, d_model: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32,
                                   feed_forward_proj="gated-gelu", pad_token_id=tok.pad_token_id,
                                   eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id))


def _vae(latent_channels: int = 4, flow: bool = False):
    from diffusers import AutoencoderKL

    kw = dict(scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False) if flow else {}
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                         latent_channels=latent_channels, norm_num_groups=8, sample_size=16, **kw)


def make_tiny_pipeline(kind: str = "sd1", seed: int = 0):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    torch.manual_seed(seed)
    pipe = {"sd1": _sd, "sd2": _sd, "sdxl": _sdxl, "sd3": _sd3, "flux": _flux}[kind](kind)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sd(kind: str):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from .tokenizer import load_world_tokenizer

    tok = load_world_tokenizer()
    hidden = 32
    te = _clip(tok, hidden, act="quick_gelu" if kind == "sd1" else "gelu")
    sd2 = kind == "sd2"
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden, norm_num_groups=8,
        attention_head_dim=(2, 4) if sd2 else 2, use_linear_projection=sd2)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction" if sd2 else "epsilon")
    return StableDiffusionPipeline(vae=_vae(), text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _sdxl(_kind: str):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    from .tokenizer import load_world_tokenizer

    tok = load_world_tokenizer()
    te1 = _clip(tok, 32)
    te2 = _clip(tok, 32, projection=True)  # pooled (text_embeds) width 32
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8,
        transformer_layers_per_block=(1, 2), addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 32)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                   timestep_spacing="leading", prediction_type="epsilon")
    return StableDiffusionXLPipeline(vae=_vae(), text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
                                     unet=unet, scheduler=sched, force_zeros_for_empty_prompt=True)


def _sd3(_kind: str):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    from .tokenizer import build_t5_tokenizer, load_world_tokenizer

    tok = load_world_tokenizer()
    t5_tok = build_t5_tokenizer(tok, max_length=32)
    te1 = _clip(tok, 32, projection=True)
    te2 = _clip(tok, 32, projection=True)
    te3 = _t5(t5_tok, 64)  # joint width 64 = the CLIP pair's 32 + 32, as real SD3 pads 768 + 1280 to T5's 4096
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8,
                                        num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32,
                                        pooled_projection_dim=64, out_channels=4, pos_embed_max_size=16)
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=sched, vae=_vae(flow=True), text_encoder=te1,
                                    tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok, text_encoder_3=te3,
                                    tokenizer_3=t5_tok)


def _flux(_kind: str):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from .tokenizer import build_t5_tokenizer, load_world_tokenizer

    tok = load_world_tokenizer()
    t5_tok = build_t5_tokenizer(tok, max_length=32)
    te1 = _clip(tok, 32)  # FLUX reads only its pooled output
    te2 = _t5(t5_tok, 32)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                            base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                            max_image_seq_len=4096)
    return FluxPipeline(scheduler=sched, vae=_vae(flow=True), text_encoder=te1, tokenizer=tok, text_encoder_2=te2,
                        tokenizer_2=t5_tok, transformer=transformer)
