"""Tiny random-weight transformers and pipelines of the three families, built in memory.

For tests, examples and ``--tiny`` runs: the real diffusers classes at toy sizes, random
weights, and tokenizers built from scratch, so nothing is downloaded. Variants:

* ``"wan"``: ``WanTransformer3DModel`` (patch ``(1, 2, 2)``), ``WanPipeline``;
* ``"hunyuan_video"``: ``HunyuanVideoTransformer3DModel`` (1 dual + 1 single block, 1 refiner
  block, patch 2), ``HunyuanVideoPipeline`` (Llama + CLIP text encoders);
* ``"cogvideox"``: ``CogVideoXTransformer3DModel`` with RoPE (CogVideoX-5b style), ``CogVideoXPipeline``;
* ``"cogvideox1.5"``: the same with temporal patching (``patch_size_t=2``);
* ``"hunyuan_video15"``: ``HunyuanVideo15Transformer3DModel`` (2 blocks, patch 1), ``HunyuanVideo15Pipeline``
  (Qwen2.5-VL text model, ByT5; conditioning cut to 16 MLLM, 4 ByT5 and 4 image tokens).

Image-to-video (:data:`I2V_VARIANTS`), each with its pipeline (tiny image encoders built in code):

* ``"wan_i2v"``: Wan2.1 I2V (CLIP image context through added K/V in cross-attention, first-frame
  latent and mask concatenated on channels), ``WanImageToVideoPipeline``;
* ``"cogvideox_i2v"`` / ``"cogvideox1.5_i2v"``: image latents concatenated on channels (1.5: with the
  ``ofs`` embedding), ``CogVideoXImageToVideoPipeline``;
* ``"hunyuan_video_i2v"``: HunyuanVideo-I2V (``token_replace``; LLaVA image tokens in the text
  stream), ``HunyuanVideoImageToVideoPipeline``;
* ``"skyreels_i2v"``: SkyReels-V1 (image latents concatenated on channels), ``HunyuanSkyreelsImageToVideoPipeline``.

Pipelines only (:data:`WAN22_VARIANTS`, also in :data:`PIPELINE_VARIANTS`), Wan2.2-style ``WanPipeline`` objects:

* ``"wan2.2"``: two experts, ``transformer`` (high noise) and ``transformer_2`` (low noise, other
  weights), switched at ``boundary_ratio=0.9`` (Wan2.2 A14B: 0.875; with the scheduler's shift 7, 2 steps or 4 split evenly);
* ``"wan2.2-ti2v"``: one transformer with ``expand_timesteps=True``: per-token timesteps (as TI2V-5B).

Every transformer has 2 sparse target layers of 3 heads x 16 channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .config import SparseVDiTConfig
from .modes import ModeSpec

__all__ = [
    "VARIANTS",
    "I2V_VARIANTS",
    "WAN22_VARIANTS",
    "PIPELINE_VARIANTS",
    "tiny_transformer",
    "tiny_transformer_inputs",
    "tiny_mode_map",
    "tiny_pipeline",
    "tiny_pipeline_inputs",
    "tiny_tokenizer",
]

VARIANTS = ("wan", "hunyuan_video", "cogvideox", "cogvideox1.5", "hunyuan_video15")  # one per family and patching
I2V_VARIANTS = ("wan_i2v", "cogvideox_i2v", "cogvideox1.5_i2v", "hunyuan_video_i2v", "skyreels_i2v")
WAN22_VARIANTS = ("wan2.2", "wan2.2-ti2v")
PIPELINE_VARIANTS = (*VARIANTS, *I2V_VARIANTS, *WAN22_VARIANTS)  # each has a tiny_pipeline
IMAGE_DIM = 8  # the tiny image encoders' width
HEADS, HEAD_DIM = 3, 16
TEXT_DIM = 16  # text encoder width = the transformers' text embedding width


def tiny_transformer(variant: str, *, seed: int = 0, **overrides):
    """A random-weight transformer of ``variant`` (:data:`VARIANTS`, :data:`I2V_VARIANTS`), float32, eval mode."""
    from diffusers import (
        CogVideoXTransformer3DModel,
        HunyuanVideo15Transformer3DModel,
        HunyuanVideoTransformer3DModel,
        WanTransformer3DModel,
    )

    common = dict(num_attention_heads=HEADS, attention_head_dim=HEAD_DIM)
    # I2V: the base model with its image conditioning (latent channels of the tiny VAEs: 16 Wan, 4 others)
    i2v = {
        "wan_i2v": ("wan", dict(in_channels=36, out_channels=16, image_dim=IMAGE_DIM, added_kv_proj_dim=HEADS * HEAD_DIM)),
        "cogvideox_i2v": ("cogvideox", dict(in_channels=8)),
        "cogvideox1.5_i2v": ("cogvideox1.5", dict(in_channels=8, ofs_embed_dim=8)),
        "hunyuan_video_i2v": ("hunyuan_video", dict(image_condition_type="token_replace")),
        "skyreels_i2v": ("hunyuan_video", dict(in_channels=8)),
    }  # fmt: skip
    if variant in i2v:
        base, image_kwargs = i2v[variant]
        return tiny_transformer(base, seed=seed, **{**image_kwargs, **overrides})
    if variant == "wan":
        cls, kwargs = WanTransformer3DModel, dict(
            patch_size=(1, 2, 2), in_channels=4, out_channels=4, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32,
            num_layers=2, cross_attn_norm=True, rope_max_seq_len=32,
        )
    elif variant == "hunyuan_video":
        cls, kwargs = HunyuanVideoTransformer3DModel, dict(
            in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0,
            patch_size=2, patch_size_t=1, text_embed_dim=TEXT_DIM, pooled_projection_dim=8, rope_axes_dim=(4, 6, 6),
        )
    elif variant in ("cogvideox", "cogvideox1.5"):
        cls, kwargs = CogVideoXTransformer3DModel, dict(
            in_channels=4, out_channels=4, time_embed_dim=8, text_embed_dim=TEXT_DIM, num_layers=2,
            sample_width=16, sample_height=16, sample_frames=9, patch_size=2, max_text_seq_length=16,
            use_rotary_positional_embeddings=True,
        )
        if variant == "cogvideox1.5":
            kwargs.update(patch_size_t=2, sample_frames=17)
    elif variant == "hunyuan_video15":
        cls, kwargs = HunyuanVideo15Transformer3DModel, dict(
            in_channels=9, out_channels=4, num_layers=2, num_refiner_layers=1, mlp_ratio=2.0, patch_size=1,
            patch_size_t=1, text_embed_dim=TEXT_DIM, text_embed_2_dim=8, image_embed_dim=IMAGE_DIM,
            rope_axes_dim=(4, 6, 6),
        )
    else:
        raise ValueError(f"unknown tiny variant {variant!r}; choose one of {VARIANTS + I2V_VARIANTS}")
    torch.manual_seed(seed)
    return cls(**{**common, **kwargs, **overrides}).eval()


def tiny_transformer_inputs(
    transformer,
    *,
    grid: tuple[int, int, int] = (3, 4, 5),
    batch_size: int = 1,
    text_tokens: int = 7,
    text_lengths: Sequence[int] | None = None,
    image: bool = True,
    timestep: float = 500.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Forward keyword arguments for a transformer (any size) with a latent token ``grid`` after patchify.

    ``text_lengths`` (HunyuanVideo, HunyuanVideo-1.5): valid prompt tokens per batch item, the rest
    is padding. Image conditioning follows the config: Wan's image context (``image_dim``; the text
    is then 512 tokens, which Wan's cross-attention assumes), CogVideoX1.5's ``ofs``, and
    HunyuanVideo-1.5's image tokens (2 of the ``text_tokens``, all zero for text-to-video unless
    ``image``). Inputs are drawn on the CPU from ``seed`` and moved, so they do not depend on the device.
    """
    family = type(transformer).__name__
    config = transformer.config
    frames, height, width = grid
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    timesteps = torch.full((batch_size,), float(timestep), device=device)
    if family == "HunyuanVideo15Transformer3DModel":
        return _hunyuan_video15_inputs(config, grid, batch_size, text_tokens, text_lengths, image, timesteps, randn)
    text_dim = config.text_dim if family == "WanTransformer3DModel" else config.text_embed_dim
    if family == "WanTransformer3DModel" and config.image_dim is not None:
        text_tokens = 512  # WanAttnProcessor takes the last 512 context tokens as text, the rest as image
    text = randn(batch_size, text_tokens, text_dim)
    if family == "WanTransformer3DModel":
        p_t, p_h, p_w = config.patch_size
        latents = randn(batch_size, config.in_channels, frames * p_t, height * p_h, width * p_w)
        inputs = dict(hidden_states=latents, timestep=timesteps, encoder_hidden_states=text, return_dict=False)
        if config.image_dim is not None:
            inputs["encoder_hidden_states_image"] = randn(batch_size, 5, config.image_dim)
        return inputs
    if family == "HunyuanVideoTransformer3DModel":
        p, p_t = config.patch_size, config.patch_size_t
        latents = randn(batch_size, config.in_channels, frames * p_t, height * p, width * p)
        lengths = torch.tensor(text_lengths if text_lengths is not None else [text_tokens] * batch_size)
        mask = (torch.arange(text_tokens)[None, :] < lengths[:, None]).long().to(device)
        return dict(
            hidden_states=latents, timestep=timesteps, encoder_hidden_states=text, encoder_attention_mask=mask,
            pooled_projections=randn(batch_size, config.pooled_projection_dim),
            guidance=torch.full((batch_size,), 4500.0, device=device), return_dict=False,
        )
    if family == "CogVideoXTransformer3DModel":
        p, p_t = config.patch_size, config.patch_size_t
        latents = randn(batch_size, frames * (p_t or 1), config.in_channels, height * p, width * p)
        rope = _cogvideox_rotary_emb(config, frames, height, width) if config.use_rotary_positional_embeddings else None
        if rope is not None:
            rope = tuple(r.to(device) for r in rope)
        inputs = dict(
            hidden_states=latents, encoder_hidden_states=text, timestep=timesteps, image_rotary_emb=rope,
            return_dict=False,
        )
        if config.ofs_embed_dim is not None:
            inputs["ofs"] = torch.full((batch_size,), 2.0, device=device)  # as CogVideoXImageToVideoPipeline
        return inputs
    raise ValueError(f"no inputs for {family}")


def _hunyuan_video15_inputs(config, grid, batch_size, text_tokens, text_lengths, image, timesteps, randn) -> dict:
    # conditioning: text_tokens - 4 MLLM, 2 ByT5, 2 image tokens; padding takes ByT5 tokens first, then MLLM ones
    if text_tokens < 5:
        raise ValueError(f"HunyuanVideo-1.5 inputs need text_tokens >= 5 (2 image, 2 ByT5, 1+ MLLM); got {text_tokens}")
    mllm, byt5, images = text_tokens - 4, 2, 2
    masks, masks_2 = [], []
    for length in text_lengths if text_lengths is not None else [text_tokens] * batch_size:
        padding = text_tokens - length
        if not 0 <= padding < byt5 + mllm:
            raise ValueError(f"text length {length} must keep one MLLM token of {text_tokens}")
        masks_2.append([1] * (byt5 - min(padding, byt5)) + [0] * min(padding, byt5))
        masks.append([1] * (mllm - max(padding - byt5, 0)) + [0] * max(padding - byt5, 0))
    device = timesteps.device
    image_embeds = randn(batch_size, images, config.image_embed_dim)
    frames, height, width = grid
    p, p_t = config.patch_size, config.patch_size_t
    return dict(
        hidden_states=randn(batch_size, config.in_channels, frames * p_t, height * p, width * p),
        timestep=timesteps,
        encoder_hidden_states=randn(batch_size, mllm, config.text_embed_dim),
        encoder_attention_mask=torch.tensor(masks, device=device),
        encoder_hidden_states_2=randn(batch_size, byt5, config.text_embed_2_dim),
        encoder_attention_mask_2=torch.tensor(masks_2, device=device),
        image_embeds=image_embeds if image else torch.zeros_like(image_embeds),
        return_dict=False,
    )


def _cogvideox_rotary_emb(config, frames: int, height: int, width: int):
    # CogVideoXPipeline._prepare_rotary_positional_embeddings, on the token grid
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    base_height, base_width = config.sample_height // config.patch_size, config.sample_width // config.patch_size
    if config.patch_size_t is None:
        crops = get_resize_crop_region_for_grid((height, width), base_width, base_height)
        return get_3d_rotary_pos_embed(config.attention_head_dim, crops, (height, width), frames)
    return get_3d_rotary_pos_embed(
        config.attention_head_dim, None, (height, width), frames, grid_type="slice", max_size=(base_height, base_width)
    )


def tiny_mode_map(
    transformer, layers: Sequence[Sequence[ModeSpec]], *, tile_size: int = 16, **kwargs
) -> SparseVDiTConfig:
    """A mode map for ``transformer`` from per-layer head specs (``layers[i][h]``), tile 16 by default."""
    from .processors import family_of, sparse_targets

    return SparseVDiTConfig.from_specs(
        layers,
        family=family_of(transformer).name,
        transformer_class=type(transformer).__name__,
        target_modules=sparse_targets(transformer),
        tile_size=tile_size,
        **kwargs,
    )


# Pipelines --------------------------------------------------------------------------------

_WORDS = (
    "a an the of and in on with at to is dance monkey cat dog walks runs street city night day sunset beach "
    "forest river red blue green bright dark video photo blurry low quality"
).split()


def tiny_tokenizer(model_max_length: int = 512, words: Sequence[str] = _WORDS):
    """A word-level tokenizer over ``words`` (pad 0, eos 1, unk 2, bos 3), built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", "<s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>",
        model_max_length=model_max_length,
    )


IMAGE_SIZE, IMAGE_PATCH = 32, 8  # the tiny CLIP vision towers: 16 patches (+ CLS)
IMAGE_TOKEN = "<image>"  # HunyuanVideo-I2V's LLaVA image placeholder in the tiny vocabulary
# HunyuanVideo-I2V's prompt template, as short as its pipeline's cropping allows: three header ends
# (it finds the assistant part by the last), the image placeholder, the prompt. The pipeline keeps
# the prompt and every 4th of the 16 image tokens, ahead of the prompt.
_HUNYUAN_I2V_SPECIAL = ("<|end_header_id|>", "<|eot_id|>", "<|start_header_id|>", "assistant")
_HUNYUAN_I2V_TEMPLATE = {
    "template": "<|end_header_id|> <image> <|end_header_id|> {} <|eot_id|> <|start_header_id|> assistant <|end_header_id|>",
    "crop_start": 3, "image_emb_start": 1, "image_emb_end": 17, "image_emb_len": 16,
}  # fmt: skip


def _tiny_clip_vision_config():
    import transformers

    return transformers.CLIPVisionConfig(
        hidden_size=IMAGE_DIM, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=IMAGE_PATCH, projection_dim=IMAGE_DIM,
    )  # fmt: skip


def _tiny_clip_image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def tiny_image(height: int = 32, width: int = 48, seed: int = 0):
    """A random RGB picture (PIL) to condition the image-to-video pipelines on."""
    from PIL import Image

    pixels = torch.randint(0, 256, (height, width, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def tiny_pipeline(variant: str, *, seed: int = 0):
    """A whole random-weight pipeline of ``variant`` (:data:`PIPELINE_VARIANTS`) on CPU, float32.

    See :func:`tiny_pipeline_inputs` for its call arguments.
    """
    import diffusers
    import transformers

    tokenizer = tiny_tokenizer()
    if variant == "hunyuan_video_i2v":
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, *_HUNYUAN_I2V_SPECIAL]})
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    if variant in ("wan", "wan_i2v", *WAN22_VARIANTS):
        text_encoder = transformers.UMT5EncoderModel(transformers.UMT5Config(
            vocab_size=vocab, d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        ))
        vae = diffusers.AutoencoderKLWan(
            base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
        )
        components = dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                          scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0))
        if variant == "wan_i2v":  # the first-frame latent (16) and its mask (4) concatenated to the noise (16) on channels
            pipe = diffusers.WanImageToVideoPipeline(
                **components, transformer=tiny_transformer("wan_i2v", seed=seed),
                image_encoder=transformers.CLIPVisionModel(_tiny_clip_vision_config()),
                image_processor=_tiny_clip_image_processor(),
            )
        else:
            experts = {}
            if variant == "wan2.2":
                second = tiny_transformer("wan", seed=seed + 1, in_channels=16, out_channels=16)
                experts = dict(transformer_2=second, boundary_ratio=0.9)
            elif variant == "wan2.2-ti2v":
                experts = dict(expand_timesteps=True)
            pipe = diffusers.WanPipeline(
                **components, transformer=tiny_transformer("wan", seed=seed, in_channels=16, out_channels=16),
                **experts,
            )
    elif variant in ("hunyuan_video", "hunyuan_video_i2v", "skyreels_i2v"):
        llama = transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=TEXT_DIM, intermediate_size=32, num_attention_heads=4,
            num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, bos_token_id=3, eos_token_id=1,
        )
        if variant == "hunyuan_video_i2v":  # LLaVA: the picture's CLIP patches become prompt tokens
            text_encoder = transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(
                vision_config=_tiny_clip_vision_config(), text_config=llama, pad_token_id=0,
                image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), projector_hidden_act="gelu",
            ))
        else:
            text_encoder = transformers.LlamaModel(llama)
        # eos_token_id=2 selects CLIP's legacy pooling (argmax of the ids), which any vocabulary supports
        text_encoder_2 = transformers.CLIPTextModel(transformers.CLIPTextConfig(
            vocab_size=vocab, hidden_size=8, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
            projection_dim=8, max_position_embeddings=77, pad_token_id=0, bos_token_id=3, eos_token_id=2,
        ))
        vae = diffusers.AutoencoderKLHunyuanVideo(
            in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=("HunyuanVideoDownBlock3D",) * 4, up_block_types=("HunyuanVideoUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, spatial_compression_ratio=8,
            temporal_compression_ratio=4, mid_block_add_attention=True,
        )
        components = dict(
            text_encoder=text_encoder, tokenizer=tokenizer, transformer=tiny_transformer(variant, seed=seed), vae=vae,
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0),
            text_encoder_2=text_encoder_2, tokenizer_2=tiny_tokenizer(model_max_length=77),
        )  # fmt: skip
        if variant == "hunyuan_video":
            pipe = diffusers.HunyuanVideoPipeline(**components)
        elif variant == "skyreels_i2v":
            pipe = diffusers.HunyuanSkyreelsImageToVideoPipeline(**components)
        else:
            pipe = diffusers.HunyuanVideoImageToVideoPipeline(**components, image_processor=_tiny_clip_image_processor())
    elif variant in ("cogvideox", "cogvideox1.5", "cogvideox_i2v", "cogvideox1.5_i2v"):
        text_encoder = transformers.T5EncoderModel(transformers.T5Config(
            vocab_size=vocab, d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        ))
        vae = diffusers.AutoencoderKLCogVideoX(
            in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
        )
        cls = diffusers.CogVideoXImageToVideoPipeline if variant.endswith("_i2v") else diffusers.CogVideoXPipeline
        pipe = cls(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
            transformer=tiny_transformer(variant, seed=seed), scheduler=diffusers.CogVideoXDDIMScheduler(),
        )
    elif variant == "hunyuan_video15":
        pipe = _tiny_hunyuan_video15_pipeline(tokenizer, seed)
    else:
        raise ValueError(f"unknown tiny pipeline {variant!r}; choose one of {PIPELINE_VARIANTS}")
    # models built from a config start in training mode: dropout would make runs differ
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def _tiny_hunyuan_video15_pipeline(tokenizer, seed: int):
    import diffusers
    import transformers

    # the pipeline formats the prompt as a chat: a plain template of the system message and the prompt
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    text_encoder = transformers.Qwen2_5_VLTextModel(transformers.Qwen2_5_VLTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=32, num_attention_heads=4,
        num_key_value_heads=2, num_hidden_layers=2, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 0]},
        pad_token_id=0, bos_token_id=3, eos_token_id=1,
    ))
    text_encoder_2 = transformers.T5EncoderModel(transformers.T5Config(  # ByT5: 256 bytes + specials
        vocab_size=384, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2, relative_attention_num_buckets=8,
    ))
    pipe = diffusers.HunyuanVideo15Pipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=tiny_transformer("hunyuan_video15", seed=seed),
        vae=diffusers.AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8,) * 5, layers_per_block=1),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=text_encoder_2,
        tokenizer_2=transformers.ByT5Tokenizer(), guider=diffusers.ClassifierFreeGuidance(guidance_scale=5.0),
    )
    # the pipeline's conditioning lengths are attributes (1000 MLLM tokens after a 108-token system prompt,
    # 256 ByT5, 729 image tokens, all zero and masked in text-to-video): 16, 4 and 4 here
    pipe.prompt_template_encode_start_idx, pipe.tokenizer_max_length, pipe.tokenizer_2_max_length = 0, 16, 4
    pipe.vision_num_semantic_tokens = 4
    return pipe


def tiny_pipeline_inputs(variant: str, *, seed: int = 0, num_inference_steps: int = 2) -> dict:
    """Call arguments for :func:`tiny_pipeline`: 9 frames of 32x48, classifier-free guidance on.

    The image-to-video variants also get ``image`` (:func:`tiny_image`).
    """
    inputs = dict(
        prompt="a cat walks in the city at night", negative_prompt="blurry low quality", height=32, width=48,
        num_frames=9, num_inference_steps=num_inference_steps, guidance_scale=5.0, max_sequence_length=16,
        generator=torch.Generator().manual_seed(seed), output_type="pt",
    )
    if variant in ("hunyuan_video", "hunyuan_video_i2v", "skyreels_i2v"):
        # the default template is long (crop_start 95); a bare one keeps the tiny Llama's input short.
        # guidance_scale is HunyuanVideo's embedded guidance; true_cfg_scale > 1 runs real CFG
        # (two transformer calls per step).
        inputs.update(prompt_template={"template": "{}", "crop_start": 0}, true_cfg_scale=2.0)
    if variant == "hunyuan_video_i2v":  # the picture's 16 CLIP patches replace the placeholder
        inputs.update(prompt_template=_HUNYUAN_I2V_TEMPLATE, guidance_scale=1.0)
    if variant == "hunyuan_video15":  # its guider holds the guidance scale; its prompt lengths are attributes
        del inputs["guidance_scale"], inputs["max_sequence_length"]
    if variant == "wan_i2v":
        inputs["max_sequence_length"] = 512  # WanAttnProcessor takes the last 512 context tokens as text
    if variant in I2V_VARIANTS:
        inputs["image"] = tiny_image(seed=seed)
    return inputs
