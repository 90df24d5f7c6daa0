#!/usr/bin/env python3
"""Reference runs of diffusers' Stable Diffusion pipelines that the tests repeat with `--seed`:
seeded generators (initial latents and per-step noise from one torch.Generator), img2img, inpainting with a
4-channel UNet, and an SD 2.x-style model (v-prediction, linear projections, per-block head counts, pad "!").

Models: ../vectors/models/sd_tiny (a tiny random SD 1.x pipeline) and a tiny random SD 2.x-style pipeline built
here (sd2_tiny/, nothing downloaded). Inputs init.png and mask.png are drawn here. For each case the script
stores the final latents and the image (NHWC in [0, 1]) in <case>.safetensors and its settings and tolerance
in cases.json; tolerance as ../vectors/README.md section 3: rel = max(1e-5, 10 x the f32-vs-f64 gap).

Usage: python make_sd_variants.py   (torch 2.15.0, diffusers 0.42.1, transformers 5.24.0)
"""

import copy
import json
import os
import shutil
import sys

import numpy as np
import torch
from diffusers import (AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline,
                       UNet2DConditionModel)
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "vectors"))
import make_vectors_v2 as vectors  # noqa: E402

vectors.torch, vectors.save_file = torch, save_file
SD_TINY = os.path.join(HERE, "..", "vectors", "models", "sd_tiny")
SD2 = os.path.join(HERE, "sd2_tiny")
SIZE = 64


def draw_inputs():
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    img = np.stack([x * 4, y * 4, np.where((x - 40) ** 2 + (y - 24) ** 2 < 150, 230, 40)], -1).clip(0, 255)
    Image.fromarray(img.astype(np.uint8), "RGB").save(os.path.join(HERE, "init.png"))
    Image.fromarray(np.where(x >= 32, 255, 0).astype(np.uint8), "L").save(os.path.join(HERE, "mask.png"))


def build_sd2():
    tok = CLIPTokenizer.from_pretrained(os.path.join(SD_TINY, "tokenizer"), pad_token="!")
    te = vectors.build_model(CLIPTextModel, 11, 111, CLIPTextConfig(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    unet = vectors.build_model(
        UNet2DConditionModel, 12, 112, sample_size=SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, cross_attention_dim=32, norm_num_groups=16)
    vae = vectors.realign(AutoencoderKL.from_pretrained(os.path.join(SD_TINY, "vae")))
    sched = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        prediction_type="v_prediction", steps_offset=1, use_karras_sigmas=True)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if os.path.isdir(SD2):
        shutil.rmtree(SD2)
    pipe.save_pretrained(SD2, safe_serialization=True)
    vectors.relabel_clip_text_weights(os.path.join(SD2, "text_encoder"))
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(SD_TINY, "tokenizer", f), os.path.join(SD2, "tokenizer", f))


def load(cls, folder, scheduler_cls=None):
    pipe = cls.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    if scheduler_cls is not None:
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        vectors.realign(m)
    return pipe


CASES = [
    # id, pipeline class, folder, scheduler override, stipple sampler, kwargs
    ("euler_a_txt2img", StableDiffusionPipeline, SD_TINY, EulerAncestralDiscreteScheduler, "euler_a",
     dict(prompt="a painting of a squirrel eating a burger", negative_prompt="blurry", seed=5, steps=4, cfg=7.0)),
    ("img2img_ddim", StableDiffusionImg2ImgPipeline, SD_TINY, None, "ddim",
     dict(prompt="an astronaut riding a horse, photo!", negative_prompt="", seed=6, steps=5, cfg=7.0, strength=0.6)),
    ("inpaint_ddpm", StableDiffusionInpaintPipeline, SD_TINY, DDPMScheduler, "ddpm",
     dict(prompt="a painting of a squirrel eating a burger", negative_prompt="", seed=8, steps=4, cfg=7.0, strength=1.0,
          mask=True)),
    ("sd2_vpred_dpmpp_karras", StableDiffusionPipeline, SD2, None, "dpmpp_2m_karras",
     dict(prompt="an astronaut riding a horse, photo!", negative_prompt="", seed=9, steps=4, cfg=7.0)),
]


def run(pipe, kw, dtype):
    pipe = copy.deepcopy(pipe).to(dtype)
    args = dict(prompt=kw["prompt"], negative_prompt=kw["negative_prompt"], num_inference_steps=kw["steps"],
                guidance_scale=kw["cfg"], generator=torch.Generator("cpu").manual_seed(kw["seed"]), output_type="latent")
    if "strength" in kw:
        args.update(image=Image.open(os.path.join(HERE, "init.png")), strength=kw["strength"])
        if kw.get("mask"):
            args.update(mask_image=Image.open(os.path.join(HERE, "mask.png")), height=SIZE, width=SIZE)
    else:
        args.update(height=SIZE, width=SIZE)
    if dtype == torch.float64:
        # Draw the noise in float32 as the float32 run does, then compute in float64.
        orig = torch.randn
        torch.randn = lambda *a, **k: orig(*a, **{**k, "dtype": torch.float32}).to(torch.float64)
        try:
            latents = pipe(**args).images
        finally:
            torch.randn = orig
    else:
        latents = pipe(**args).images
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return {"latents": latents.float(), "image": (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float()}


def main():
    torch.set_num_threads(2)
    draw_inputs()
    build_sd2()
    meta = {}
    with torch.no_grad():
        for case_id, cls, folder, sched, sampler, kw in CASES:
            pipe = load(cls, folder, sched)
            ref = run(pipe, kw, torch.float32)
            ref64 = run(pipe, kw, torch.float64)
            gap = max(float((ref[k].double() - ref64[k].double()).abs().max() / ref64[k].abs().max()) for k in ref)
            save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(HERE, f"{case_id}.safetensors"))
            meta[case_id] = {**kw, "model": os.path.relpath(folder, HERE), "sampler": sampler, "size": SIZE,
                             "f32_vs_f64_rel": gap,
                             "tolerance": {"abs": 1e-6, "rel": max(1e-5, float(f"{10 * gap:.2g}"))}}
            print(case_id, meta[case_id]["tolerance"])
    meta["versions"] = {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
                        "transformers": __import__("transformers").__version__}
    with open(os.path.join(HERE, "cases.json"), "w") as f:
        json.dump(meta, f, indent=2)


if __name__ == "__main__":
    main()
