"""The untrained reference pipelines of each family, and how each one is trained.

Every pipeline is the family's real diffusers pipeline with its real classes at toy sizes:
a frozen random text encoder over the caption vocabulary (the caption still decides the
video: the encoder keeps token identity), a small VAE of the family's class that compresses
2x in space (HunyuanVideo's also 4x in time, the only ratio its VAE supports besides 8), and
a 6-layer transformer of 6 heads x 32 channels whose latent grid is 9 frames x 32 x 32, i.e.
9 x 16 x 16 = 2,304 video tokens after patchify.

Each family trains with its own objective, as its scheduler samples:

* Wan and HunyuanVideo: flow matching (``x_t = (1 - s) x_0 + s e``, target ``e - x_0``,
  timestep ``1000 s``), ``s`` uniform then shifted like the scheduler's sigmas.
* CogVideoX: v-prediction on the DDPM chain of ``CogVideoXDDIMScheduler`` (zero-SNR, SNR shift).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .data import vocabulary

FAMILIES = ("wan", "cogvideox", "hunyuan_video")
HEADS, HEAD_DIM, LAYERS = 6, 32, 6
TEXT_DIM = 32
TEXT_TOKENS = 32  # max_sequence_length: captions are at most ~40 words; fits the common ones
LATENT_CHANNELS = 16
LATENT_FRAMES, LATENT_SIZE = 9, 32  # 9 x 32 x 32 latents -> 9 x 16 x 16 tokens
HEIGHT = WIDTH = 64  # pixels: the VAEs compress 2x in space
FLOW_SHIFT = 3.0


@dataclass
class Recipe:
    family: str
    pipeline_class: str
    pixel_frames: int
    generate: dict[str, Any]  # call kwargs a user generates with (saved in sparse_vdit_reference.json)
    caption_dropout: float = 0.1  # empty captions in training make classifier-free guidance work
    extra: dict[str, Any] = field(default_factory=dict)


RECIPES = {
    "wan": Recipe(
        "wan", "WanPipeline", LATENT_FRAMES,
        dict(height=HEIGHT, width=WIDTH, num_frames=LATENT_FRAMES, num_inference_steps=12, guidance_scale=4.0,
             negative_prompt="", max_sequence_length=TEXT_TOKENS),
    ),
    "cogvideox": Recipe(
        "cogvideox", "CogVideoXPipeline", LATENT_FRAMES,
        dict(height=HEIGHT, width=WIDTH, num_frames=LATENT_FRAMES, num_inference_steps=12, guidance_scale=4.0,
             negative_prompt="", max_sequence_length=TEXT_TOKENS, use_dynamic_cfg=False),
    ),
    "hunyuan_video": Recipe(
        "hunyuan_video", "HunyuanVideoPipeline", (LATENT_FRAMES - 1) * 4 + 1,
        # guidance_scale is HunyuanVideo's embedded guidance (the model is conditioned on it, no CFG
        # pass); a bare template keeps the tiny Llama's input to the caption itself
        dict(height=HEIGHT, width=WIDTH, num_frames=(LATENT_FRAMES - 1) * 4 + 1, num_inference_steps=12,
             guidance_scale=6.0, max_sequence_length=TEXT_TOKENS,
             prompt_template={"template": "{}", "crop_start": 0}),
        caption_dropout=0.0,
    ),
}


def caption_tokenizer(model_max_length: int):
    """A word-level tokenizer over the caption vocabulary (pad 0, eos 1, unk 2, bos 3)."""
    from ..testing import tiny_tokenizer

    return tiny_tokenizer(model_max_length, words=vocabulary())


def build_pipeline(family: str, *, seed: int = 0):
    """The untrained pipeline of ``family`` on the CPU, float32 (text encoders frozen and random)."""
    import diffusers
    import transformers

    torch.manual_seed(seed)
    tokenizer = caption_tokenizer(512)
    vocab = len(tokenizer)
    if family == "wan":
        text_encoder = transformers.UMT5EncoderModel(transformers.UMT5Config(
            vocab_size=vocab, d_model=TEXT_DIM, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
            relative_attention_num_buckets=16, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        ))
        vae = diffusers.AutoencoderKLWan(
            base_dim=16, z_dim=LATENT_CHANNELS, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
            scale_factor_temporal=1, scale_factor_spatial=2,
        )
        transformer = diffusers.WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HEAD_DIM,
            in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, text_dim=TEXT_DIM, freq_dim=64,
            ffn_dim=4 * HEADS * HEAD_DIM, num_layers=LAYERS, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            rope_max_seq_len=64,
        )
        scheduler = diffusers.UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=FLOW_SHIFT,
        )
        return diffusers.WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                     transformer=transformer, scheduler=scheduler)
    if family == "cogvideox":
        text_encoder = transformers.T5EncoderModel(transformers.T5Config(
            vocab_size=vocab, d_model=TEXT_DIM, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
            relative_attention_num_buckets=16, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        ))
        vae = diffusers.AutoencoderKLCogVideoX(
            in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
            down_block_types=("CogVideoXDownBlock3D",) * 2, up_block_types=("CogVideoXUpBlock3D",) * 2,
            block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, temporal_compression_ratio=1,
        )
        transformer = diffusers.CogVideoXTransformer3DModel(
            num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS, time_embed_dim=128, text_embed_dim=TEXT_DIM, num_layers=LAYERS,
            sample_width=LATENT_SIZE, sample_height=LATENT_SIZE, sample_frames=LATENT_FRAMES, patch_size=2,
            max_text_seq_length=TEXT_TOKENS, use_rotary_positional_embeddings=True,
        )
        scheduler = diffusers.CogVideoXDDIMScheduler(
            beta_schedule="scaled_linear", prediction_type="v_prediction", rescale_betas_zero_snr=True,
            snr_shift_scale=3.0, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True,
        )
        return diffusers.CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                           transformer=transformer, scheduler=scheduler)
    if family == "hunyuan_video":
        text_encoder = transformers.LlamaModel(transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=TEXT_DIM, intermediate_size=64, num_attention_heads=2,
            num_key_value_heads=2, num_hidden_layers=3, pad_token_id=0, bos_token_id=3, eos_token_id=1,
        ))
        # eos_token_id=2 selects CLIP's legacy pooling (argmax of the ids), which any vocabulary supports
        text_encoder_2 = transformers.CLIPTextModel(transformers.CLIPTextConfig(
            vocab_size=vocab, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
            projection_dim=16, max_position_embeddings=77, pad_token_id=0, bos_token_id=3, eos_token_id=2,
        ))
        vae = diffusers.AutoencoderKLHunyuanVideo(
            in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
            down_block_types=("HunyuanVideoDownBlock3D",) * 3, up_block_types=("HunyuanVideoUpBlock3D",) * 3,
            block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8, spatial_compression_ratio=2,
            temporal_compression_ratio=4, mid_block_add_attention=False,
        )
        transformer = diffusers.HunyuanVideoTransformer3DModel(
            in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_attention_heads=HEADS,
            attention_head_dim=HEAD_DIM, num_layers=2, num_single_layers=LAYERS - 2, num_refiner_layers=1,
            mlp_ratio=2.0, patch_size=2, patch_size_t=1, text_embed_dim=TEXT_DIM, pooled_projection_dim=16,
            rope_axes_dim=(8, 12, 12), guidance_embeds=True,
        )
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0)
        return diffusers.HunyuanVideoPipeline(
            text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae, scheduler=scheduler,
            text_encoder_2=text_encoder_2, tokenizer_2=caption_tokenizer(77),
        )
    raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")


# Training ---------------------------------------------------------------------------------
def encode_video(pipe, video: torch.Tensor) -> torch.Tensor:
    """Pixels ``(B, 3, F, H, W)`` in [-1, 1] -> the latents the pipeline's transformer sees."""
    vae = pipe.vae
    latents = vae.encode(video.to(vae.dtype)).latent_dist.mode()
    family = pipeline_family(pipe)
    if family == "wan":
        mean = torch.tensor(vae.config.latents_mean, device=latents.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, device=latents.device).view(1, -1, 1, 1, 1)
        return (latents - mean) / std
    latents = latents * vae.config.scaling_factor
    if family == "cogvideox":
        return latents.permute(0, 2, 1, 3, 4)  # (B, F, C, H, W)
    return latents


def pipeline_family(pipe) -> str:
    """The reference recipe (family name) of a pipeline, by its class."""
    name = type(pipe).__name__
    for family, recipe in RECIPES.items():
        if recipe.pipeline_class == name:
            return family
    raise ValueError(f"no reference recipe for {name}")


def text_conditioning(pipe, prompts: list[str], device) -> dict[str, torch.Tensor]:
    """The transformer's text inputs for ``prompts``, through the pipeline's own ``encode_prompt``."""
    family = pipeline_family(pipe)
    call = RECIPES[family].generate
    with torch.no_grad():
        if family == "hunyuan_video":
            embeds, pooled, mask = pipe.encode_prompt(
                prompts, prompt_template=call["prompt_template"], device=device,
                max_sequence_length=call["max_sequence_length"])
            return dict(encoder_hidden_states=embeds, encoder_attention_mask=mask, pooled_projections=pooled)
        embeds, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                       max_sequence_length=call["max_sequence_length"], device=device)
        return dict(encoder_hidden_states=embeds)


def training_step_inputs(pipe, latents: torch.Tensor, generator: torch.Generator | None = None):
    """Noised latents and the target for one training step: ``(transformer kwargs, target)``."""
    family = pipeline_family(pipe)
    batch, device = latents.shape[0], latents.device
    noise = torch.randn(latents.shape, generator=generator, device=device)
    u = torch.rand(batch, generator=generator, device=device)
    if family == "cogvideox":
        scheduler = pipe.scheduler
        t = (u * scheduler.config.num_train_timesteps).long().clamp(max=scheduler.config.num_train_timesteps - 1)
        alphas = scheduler.alphas_cumprod.to(device, torch.float32)[t].view(-1, 1, 1, 1, 1)
        noisy = alphas.sqrt() * latents + (1 - alphas).sqrt() * noise
        target = alphas.sqrt() * noise - (1 - alphas).sqrt() * latents
        num_frames = latents.shape[1]
        rope = pipe._prepare_rotary_positional_embeddings(HEIGHT, WIDTH, num_frames, device)
        return dict(hidden_states=noisy, timestep=t, image_rotary_emb=rope), target
    shift = FLOW_SHIFT if family == "wan" else pipe.scheduler.config.shift
    sigma = shift * u / (1 + (shift - 1) * u)
    s = sigma.view(-1, 1, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    kwargs = dict(hidden_states=noisy, timestep=sigma * 1000)
    if family == "hunyuan_video":
        kwargs["guidance"] = torch.full((batch,), RECIPES[family].generate["guidance_scale"] * 1000.0, device=device)
    return kwargs, noise - latents
