"""The mini model's architecture: a Stable-Diffusion-shaped pipeline, only smaller.

AutoencoderKL (32x32 RGB <-> 4x16x16 latents) + UNet2DConditionModel with
cross-attention + CLIPTextModel + CLIPTokenizer + a DPM-Solver++ scheduler, all
stock diffusers/transformers classes, so plain
`StableDiffusionPipeline.from_pretrained(path)` loads the result.
"""
from __future__ import annotations

TEXT_HIDDEN = 128
MAX_TOKENS = 32

# Noise schedule of Stable Diffusion v1 (scaled_linear, 1000 steps; CompVis/stable-diffusion configs).
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon")


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
                         latent_channels=4, norm_num_groups=16, sample_size=32)


def make_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 64), layers_per_block=1, cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=4, norm_num_groups=16)


def make_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=4 * TEXT_HIDDEN,
                         num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, projection_dim=TEXT_HIDDEN)
    return CLIPTextModel(cfg)


def make_train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULE)


def make_sample_scheduler():
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**SCHEDULE)
