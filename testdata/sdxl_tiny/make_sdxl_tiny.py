#!/usr/bin/env python3
"""Reference data for Stipple's SDXL path: a tiny random StableDiffusionXLPipeline and one seeded run of it.

Builds (nothing is downloaded) a pipeline with SDXL's structure at toy size: a UNet with the `text_time`
added embedding, per-block transformer depth and linear projections; CLIPTextModel + CLIPTextModelWithProjection
(the second one's text_embeds are the pooled conditioning, hidden_states[-2] of both the context); the tiny
tokenizer of ../vectors/models/sd_tiny for both (tokenizer_2 with pad token "!", as SDXL's); sd_tiny's VAE (2x downsampling) with
SDXL's scaling factor 0.13025; EulerDiscreteScheduler with SDXL's config. Then runs the pipeline with
`latents = torch.randn(shape, generator=torch.Generator().manual_seed(SEED))` (what `stipple generate --seed SEED`
draws) and an empty negative prompt (force_zeros_for_empty_prompt), and stores the final latents and image.

Tolerance, as ../vectors/README.md section 3 derives it: rel = max(1e-5, 10 x the float32-vs-float64 gap of
this run), abs = 1e-6; written to reference.json.

Usage: python make_sdxl_tiny.py   (torch 2.15.0, diffusers 0.42.1, transformers 5.24.0; writes next to itself)
"""

import copy
import json
import os
import shutil
import sys

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "vectors"))
import make_vectors_v2 as vectors  # noqa: E402

# The shared generator imports torch and safetensors inside its entry point; give its helpers theirs.
vectors.torch, vectors.save_file = torch, save_file
build_model, realign, relabel_clip_text_weights = vectors.build_model, vectors.realign, vectors.relabel_clip_text_weights

SD_TINY = os.path.join(HERE, "..", "vectors", "models", "sd_tiny")
OUT = os.path.join(HERE, "model")
PROMPT = "an astronaut riding a horse, photo!"
SEED, STEPS, GUIDANCE, SIZE = 7, 3, 5.0, 64


def build():
    tok = CLIPTokenizer.from_pretrained(os.path.join(SD_TINY, "tokenizer"))
    tok2 = CLIPTokenizer.from_pretrained(os.path.join(SD_TINY, "tokenizer"), pad_token="!")
    clip = dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                num_attention_heads=4, max_position_embeddings=77, layer_norm_eps=1e-5, projection_dim=32,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    te = build_model(CLIPTextModel, 1, 101, CLIPTextConfig(**clip, hidden_act="quick_gelu", pad_token_id=tok.pad_token_id))
    te2 = build_model(CLIPTextModelWithProjection, 2, 102,
                      CLIPTextConfig(**clip, hidden_act="gelu", pad_token_id=tok2.pad_token_id))
    unet = build_model(
        UNet2DConditionModel, 3, 103,
        sample_size=SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2), use_linear_projection=True, cross_attention_dim=64,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
        norm_num_groups=16,
    )
    vae = AutoencoderKL.from_pretrained(os.path.join(SD_TINY, "vae"))
    vae.register_to_config(scaling_factor=0.13025)
    realign(vae)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading", interpolation_type="linear")
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2,
                                     unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True)


def run(pipe, dtype):
    pipe = copy.deepcopy(pipe).to(dtype)
    f = pipe.vae_scale_factor
    latents = torch.randn((1, 4, SIZE // f, SIZE // f), generator=torch.Generator("cpu").manual_seed(SEED),
                          dtype=torch.float32).to(dtype)
    out = pipe(PROMPT, negative_prompt=None, height=SIZE, width=SIZE, num_inference_steps=STEPS,
               guidance_scale=GUIDANCE, latents=latents, output_type="latent").images
    image = pipe.vae.decode(out / pipe.vae.config.scaling_factor).sample
    return {"latents": out.float(), "image": (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float()}


def main():
    torch.set_num_threads(2)
    pipe = build()
    pipe.set_progress_bar_config(disable=True)
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    pipe.save_pretrained(OUT, safe_serialization=True)
    relabel_clip_text_weights(os.path.join(OUT, "text_encoder"))
    for sub in ("tokenizer", "tokenizer_2"):
        for f in ("vocab.json", "merges.txt"):
            shutil.copy(os.path.join(SD_TINY, "tokenizer", f), os.path.join(OUT, sub, f))
    with torch.no_grad():
        pipe = StableDiffusionXLPipeline.from_pretrained(OUT)
        pipe.set_progress_bar_config(disable=True)
        for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            realign(m)
        ref = run(pipe, torch.float32)
        ref64 = run(pipe, torch.float64)
    gap = max(float((ref[k].double() - ref64[k].double()).abs().max() / ref64[k].abs().max()) for k in ref)
    tolerance = {"abs": 1e-6, "rel": max(1e-5, float(f"{10 * gap:.2g}"))}
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(HERE, "reference.safetensors"))
    with open(os.path.join(HERE, "reference.json"), "w") as f:
        json.dump({"prompt": PROMPT, "negative_prompt": "", "seed": SEED, "steps": STEPS, "guidance_scale": GUIDANCE,
                   "size": SIZE, "sampler": "euler", "tolerance": tolerance, "f32_vs_f64_rel": gap,
                   "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
                                "transformers": __import__("transformers").__version__}}, f, indent=2)
    print(json.dumps(tolerance))


if __name__ == "__main__":
    main()
