"""Tiny randomly initialised Stable-Diffusion-style pipelines built from configs.

For tests and code-path checks without any download: "sd1" mirrors SD 1.x
(conv projections in the transformer blocks, epsilon prediction, heads given
as one number), "sd2" mirrors SD 2.x (linear projections, per-block head
dims, v-prediction). Both use the mini world's tokenizer.
"""
from __future__ import annotations

import torch


def make_tiny_pipeline(kind: str = "sd1", seed: int = 0):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tokenizer import load_world_tokenizer

    if kind not in ("sd1", "sd2"):
        raise ValueError(f"kind must be sd1 or sd2, got {kind!r}")
    torch.manual_seed(seed)
    tok = load_world_tokenizer()
    hidden = 32
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id,
                                      hidden_act="quick_gelu" if kind == "sd1" else "gelu"))
    sd2 = kind == "sd2"
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden, norm_num_groups=8,
        attention_head_dim=(2, 4) if sd2 else 2, use_linear_projection=sd2)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=8, sample_size=16)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction" if sd2 else "epsilon")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
