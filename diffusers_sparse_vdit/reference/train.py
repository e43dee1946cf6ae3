"""Train a reference pipeline: ``python -m diffusers_sparse_vdit.reference.train --family wan --out DIR``.

Two stages on procedural captioned video (:mod:`.data`), both time-boxed and seeded:

1. the VAE learns to reconstruct the videos (MSE plus a small KL term), then its latent
   statistics are written into its config the way the family's pipeline reads them;
2. the transformer learns to denoise the VAE's latents with the family's objective
   (:func:`.families.training_step_inputs`), captions dropped now and then so
   classifier-free guidance works; weights are averaged (EMA) for sampling.

The text encoders stay frozen and random. The pipeline is saved in bfloat16 with
``save_pretrained`` (so ``<Family>Pipeline.from_pretrained(DIR)`` loads it), beside
``sparse_vdit_reference.json`` (generation settings, calibration and held-out captions,
training log) and a model card. About 8 minutes a family on one H200.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import REFERENCE_FILE
from .data import calibration_captions, heldout_captions, render, sample_scene
from .families import FAMILIES, RECIPES, build_pipeline, encode_video, text_conditioning, training_step_inputs


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _batch(rng: random.Random, pipe, family: str, size: int, device):
    """``size`` fresh scenes and their videos ``(size, 3, frames, height, width)`` in [-1, 1]."""
    recipe = RECIPES[family]
    scenes = [sample_scene(rng) for _ in range(size)]
    height, width = recipe.generate["height"], recipe.generate["width"]
    return scenes, render(scenes, recipe.pixel_frames, height, width, device)


def train_vae(pipe, family: str, *, seconds: float, batch: int, lr: float, rng: random.Random, device) -> dict:
    vae = pipe.vae
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start, step, losses = time.time(), 0, []
    while time.time() - start < seconds:
        _, video = _batch(rng, pipe, family, batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            dist = vae.encode(video).latent_dist
            recon = vae.decode(dist.sample()).sample
        kl = 0.5 * (dist.mean.float() ** 2 + dist.var.float() - 1 - dist.logvar.float()).mean()
        loss = F.mse_loss(recon.float(), video) + 1e-3 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(float(loss))
        step += 1
        if step % 100 == 0:
            _log(f"vae step {step} loss {sum(losses[-100:]) / 100:.4f}")
    vae.eval().requires_grad_(False)
    # latent statistics over fresh videos, written where the pipeline reads them
    with torch.no_grad():
        _, video = _batch(rng, pipe, family, 32, device)
        latents = vae.encode(video).latent_dist.mode().float()
        recon = vae.decode(latents.to(vae.dtype)).sample.float()
    mse = float(F.mse_loss(recon.clamp(-1, 1), video))
    psnr = 10 * math.log10(4.0 / max(mse, 1e-12))  # pixels in [-1, 1]: peak-to-peak 2
    if family == "wan":
        vae.register_to_config(latents_mean=latents.mean(dim=(0, 2, 3, 4)).tolist(),
                               latents_std=latents.std(dim=(0, 2, 3, 4)).tolist())
    else:
        vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    _log(f"vae done: {step} steps, reconstruction PSNR {psnr:.1f} dB")
    return dict(steps=step, seconds=round(time.time() - start, 1), final_loss=sum(losses[-50:]) / 50,
                reconstruction_psnr_db=round(psnr, 2))


@torch.no_grad()
def encode_dataset(pipe, family: str, count: int, rng: random.Random, device, chunk: int = 32):
    """``count`` fresh scenes, rendered and encoded once: ``(latents, captions)``.

    Encoding through the VAE costs more than a transformer step, so the transformer trains
    on a fixed set of encoded scenes (many epochs of a few thousand unique videos).
    """
    latents, captions = [], []
    for start in range(0, count, chunk):
        scenes, video = _batch(rng, pipe, family, min(chunk, count - start), device)
        latents.append(encode_video(pipe, video).float())
        captions += [s.caption for s in scenes]
    return torch.cat(latents), captions


def train_transformer(pipe, family: str, *, seconds: float, batch: int, lr: float, ema_decay: float,
                      rng: random.Random, device, generator: torch.Generator, dataset_size: int) -> dict:
    recipe = RECIPES[family]
    t0 = time.time()
    data, data_captions = encode_dataset(pipe, family, dataset_size, rng, device)
    _log(f"encoded {dataset_size} scenes in {time.time() - t0:.0f} s")
    transformer = pipe.transformer
    transformer.train().requires_grad_(True)
    ema = copy.deepcopy(transformer).eval().requires_grad_(False)
    opt = torch.optim.AdamW(transformer.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    warmup, start, step, losses, log = 200, time.time(), 0, [], []
    while (elapsed := time.time() - start) < seconds:
        # cosine to 10% over the time box, after a linear warm-up
        progress = min(elapsed / seconds, 1.0)
        scale = min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        index = torch.randint(len(data), (batch,), generator=generator, device=device)
        latents = data[index]
        captions = ["" if rng.random() < recipe.caption_dropout else data_captions[i] for i in index.tolist()]
        text = text_conditioning(pipe, captions, device)
        kwargs, target = training_step_inputs(pipe, latents, generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = transformer(**kwargs, **text, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(ema_decay, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), transformer.parameters()):
                e.lerp_(p.detach(), 1 - decay)
        losses.append(float(loss))
        step += 1
        if step % 200 == 0:
            mean = sum(losses[-200:]) / 200
            log.append((step, round(elapsed, 1), round(mean, 4)))
            _log(f"transformer step {step} loss {mean:.4f} lr {lr * scale:.2e}")
    pipe.transformer = ema  # the averaged weights are the ones saved
    pipe.register_modules(transformer=ema)
    return dict(steps=step, seconds=round(time.time() - start, 1), batch=batch, lr=lr, ema_decay=ema_decay,
                dataset_size=dataset_size,
                final_loss=round(sum(losses[-100:]) / max(1, len(losses[-100:])), 4), loss_log=log)


def save_preview(pipe, family: str, prompts: list[str], path: Path, seed: int) -> None:
    """Decoded frames of a few held-out captions, one row each: what the model learned, at a glance."""
    import numpy as np
    from PIL import Image

    rows = []
    for prompt in prompts:
        frames = pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np",
                      **RECIPES[family].generate).frames[0]  # (F, H, W, 3) in [0, 1]
        frames = frames[:: max(1, len(frames) // 9)][:9]
        rows.append(np.concatenate(list(frames), axis=1))
    image = (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(image).resize((image.shape[1] * 2, image.shape[0] * 2), Image.NEAREST).save(path)


def write_card(out: Path, family: str, info: dict) -> None:
    recipe = RECIPES[family]
    t = info["training"]
    lines = [
        "---", "library_name: diffusers", "tags:", "- text-to-video", "- sparse-vdit", "- reference-model", "---",
        f"# Reference {recipe.pipeline_class}: a tiny model trained on procedural video",
        "",
        "A whole diffusers pipeline of the real classes at toy size, trained so that its attention is learned",
        "rather than random: the model diffusers-sparse-vdit measures the quality of sparse attention on.",
        "It is not a general video model: it draws coloured shapes moving over textured backgrounds.",
        "",
        f"* Transformer: `{type(info['_pipe'].transformer).__name__}`, {info['transformer_parameters'] / 1e6:.1f} M"
        f" parameters; latent grid {info['latent_grid']} = {info['video_tokens']} video tokens.",
        f"* VAE: `{type(info['_pipe'].vae).__name__}` trained {t['vae']['seconds']:.0f} s"
        f" (reconstruction PSNR {t['vae']['reconstruction_psnr_db']} dB); text encoder(s) frozen, random, over a"
        f" {info['vocabulary_size']}-word caption vocabulary.",
        f"* Transformer trained {t['transformer']['steps']} steps ({t['transformer']['seconds']:.0f} s, batch"
        f" {t['transformer']['batch']}, final loss {t['transformer']['final_loss']}) with the family's objective;"
        " EMA weights saved in bfloat16.",
        f"* Generation: `{json.dumps(info['generate'])}`.",
        "* Data: procedural scenes (objects with colour, shape, size and motion; camera pans; backgrounds;"
        " occlusion; cuts and static shots). Held-out captions use colour-shape pairs training never drew.",
        "",
        "![held-out captions, frames left to right](preview.png)",
        "",
        "Rows: " + "; ".join(f"`{p}`" for p in info["heldout_prompts"][:3]) + ".",
        "",
        "Reproduce: `python -m diffusers_sparse_vdit.reference.train --family "
        f"{family} --out DIR --seed {info['seed']}` (one H200, about {info['total_minutes']:.0f} minutes).",
        "",
        "```python",
        f"from diffusers import {recipe.pipeline_class}",
        f'pipe = {recipe.pipeline_class}.from_pretrained("reference_models/{family}")',
        "```",
    ]
    (out / "README.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=FAMILIES, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-seconds", type=float, default=90)
    parser.add_argument("--seconds", type=float, default=360, help="transformer training time box")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vae-batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--dataset-size", type=int, default=8192, help="encoded scenes the transformer trains on")
    parser.add_argument("--vae-lr", type=float, default=2e-3)
    parser.add_argument("--resume", type=Path, help="continue from a saved reference pipeline (both stages)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    generator = torch.Generator(device).manual_seed(args.seed)
    t0 = time.time()
    if args.resume:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(args.resume, torch_dtype=torch.float32).to(device)
        previous = json.loads((args.resume / REFERENCE_FILE).read_text())["training"]
    else:
        pipe = build_pipeline(args.family, seed=args.seed).to(device)
        previous = None
    for name in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    _log(f"{args.family}: transformer {sum(p.numel() for p in pipe.transformer.parameters()) / 1e6:.2f} M params")
    vae_log = train_vae(pipe, args.family, seconds=args.vae_seconds, batch=args.vae_batch, lr=args.vae_lr,
                        rng=rng, device=device)
    tr_log = train_transformer(pipe, args.family, seconds=args.seconds, batch=args.batch, lr=args.lr,
                               ema_decay=args.ema, rng=rng, device=device, generator=generator,
                               dataset_size=args.dataset_size)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        save_preview(pipe, args.family, heldout_captions()[:3], args.out / "preview.png", args.seed)
    except Exception as error:  # the preview is a picture for the card, not a reason to lose the model
        _log(f"preview failed: {error!r}")
    pipe.to(torch.bfloat16)
    pipe.save_pretrained(args.out, safe_serialization=True)
    recipe = RECIPES[args.family]
    from .data import vocabulary

    grid = (9, 16, 16)
    info = dict(
        family=args.family, pipeline_class=recipe.pipeline_class, generate=recipe.generate, tile_size=64,
        seed=args.seed, calibration_prompts=calibration_captions(), heldout_prompts=heldout_captions(),
        latent_grid=list(grid), video_tokens=grid[0] * grid[1] * grid[2],
        transformer_parameters=sum(p.numel() for p in pipe.transformer.parameters()),
        vocabulary_size=len(vocabulary()), total_minutes=(time.time() - t0) / 60,
        training=dict(vae=vae_log, transformer=tr_log, previous=previous, device=torch.cuda.get_device_name() if device.type == "cuda"
                      else "cpu", torch=torch.__version__),
    )
    write_card(args.out, args.family, {**info, "_pipe": pipe})
    (args.out / REFERENCE_FILE).write_text(json.dumps(info, indent=1) + "\n")
    _log(f"saved {args.out} ({sum(f.stat().st_size for f in args.out.rglob('*') if f.is_file()) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
