#!/usr/bin/env python3
"""Reference runs of whole diffusion-transformer pipelines for Stipple: a tiny FluxPipeline (schnell-like and
dev-like) and two tiny StableDiffusion3Pipelines (SD3-medium-like and SD3.5-medium-like transformers), assembled
from seeded random tiny components and run with HuggingFace diffusers on CPU in float32, plus single forward
passes of SD3.5-like transformers (kind sd3_transformer of ../vectors).  Same manifest format (format_version 1)
and tolerance rule as ../vectors (see ../vectors/README.md, sections 2-3); the kinds are described in README.md
next to this script.

Usage:
    python make_pipeline_vectors.py OUT_DIR        (normally: python make_pipeline_vectors.py .)

Like ../vectors/make_vectors_v2.py (whose helpers it imports: tiny CLIP tokenizers, model building and
perturbation, realignment, case writing, tolerance arithmetic), it runs its worker twice, with
OMP_NUM_THREADS=2 into OUT_DIR (the reference values) and =1 into a temporary folder, and sets each case's
tolerance from the discrepancy between the runs and from the float32-vs-float64 gap of the same pipeline run
in float64: rel = max(10x threads gap, 10x f64 gap, 1e-5), abs = 1e-6.  Nothing is downloaded; every model
and tokenizer is built from the configs below with fixed seeds.

Written:
  OUT_DIR/manifest.json
  OUT_DIR/cases/<kind>/<id>.safetensors (+ .json strings)
  OUT_DIR/models/flux_schnell_tiny, flux_dev_tiny, sd3_tiny, sd35_medium_tiny   diffusers save_pretrained pipeline
                                                                                  folders
  OUT_DIR/models/sd35_large_tiny_transformer                                     an SD3Transformer2DModel folder
"""
import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

THIS = os.path.abspath(__file__)
SHARED = os.path.join(os.path.dirname(THIS), "..", "vectors", "make_vectors_v2.py")
REF_THREADS, ALT_THREADS = 2, 1


def shared():
    """The shared generator as a module (its worker helpers need `worker_imports()` first)."""
    spec = importlib.util.spec_from_file_location("make_vectors_v2", SHARED)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# =============================================================================================================
# Orchestrator (no torch import: the thread count must be fixed before torch loads)
# =============================================================================================================

def run_worker(out_dir, threads):
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    env["PYTHONHASHSEED"] = "0"
    env["TOKENIZERS_PARALLELISM"] = "false"
    print(f"worker OMP_NUM_THREADS={threads} -> {out_dir}", flush=True)
    subprocess.run([sys.executable, THIS, "--worker", out_dir], env=env, check=True)


def orchestrate(out_dir):
    mv = shared()
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    alt_dir = tempfile.mkdtemp(prefix="pipeline_vectors_t1_")
    try:
        run_worker(out_dir, REF_THREADS)
        run_worker(alt_dir, ALT_THREADS)
        with open(os.path.join(out_dir, "_worker.json")) as f:
            ref = json.load(f)
        for root, _, files in os.walk(os.path.join(out_dir, "models")):
            for fn in files:
                p = os.path.join(root, fn)
                q = os.path.join(alt_dir, os.path.relpath(p, out_dir))
                assert mv.sha256(p) == mv.sha256(q), f"model file differs between thread counts: {p}"
        disc = mv.compare_runs(out_dir, alt_dir, ref["cases"])
    finally:
        shutil.rmtree(alt_dir, ignore_errors=True)

    cases = []
    for c in ref["cases"]:
        worst_abs, worst_rel, worst_name, zero_abs = disc[c["id"]]
        c = dict(c)
        c["tolerance"] = mv.tolerance_from(worst_abs, worst_rel, zero_abs)
        measured = {f"threads_{ALT_THREADS}_vs_{REF_THREADS}": {"max_abs": worst_abs, "max_rel": worst_rel,
                                                                 "worst_tensor": worst_name}}
        measured.update(c.pop("measured", {}))
        c["measured"] = measured
        gap = measured.get("f32_vs_f64", {}).get("max_rel", 0.0)
        c["tolerance"]["rel"] = float(f"{max(c['tolerance']['rel'], 10 * gap, 1e-5):.2g}")
        cases.append(c)
    os.remove(os.path.join(out_dir, "_worker.json"))

    files = {}
    for sub in ("cases", "models"):
        for root, _, fns in os.walk(os.path.join(out_dir, sub)):
            for fn in fns:
                p = os.path.join(root, fn)
                os.chmod(p, 0o644)
                files[os.path.relpath(p, out_dir)] = {"bytes": os.path.getsize(p), "sha256": mv.sha256(p)}
    manifest = {
        "format_version": 1,
        "generator": "make_pipeline_vectors.py",
        "versions": ref["versions"],
        "sources": {},
        "dtype": "float32 (CPU)",
        "reference_threads": REF_THREADS,
        "tolerance_rule": ("pass iff for every compared tensor max|a-b| <= abs + rel * max|b|; rel = max(10x the "
                           "1-vs-2-thread discrepancy of the reference, 10x the float32-vs-float64 gap, 1e-5), "
                           "abs = 1e-6"),
        "cases": cases,
        "files": dict(sorted(files.items())),
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, allow_nan=False)
        f.write("\n")
    print(f"{len(cases)} cases, {len(files)} files; manifest written to {out_dir}")


# =============================================================================================================
# Worker
# =============================================================================================================

TINY_WORDS = ["a", "painting", "of", "squirrel", "eating", "burger", "an", "astronaut", "riding", "horse", "photo",
              "cat", "blurry"]
PROMPT = "a painting of a squirrel eating a burger"
SD3_NEGATIVE = "blurry photo"

# FLUX.1-schnell's and FLUX.1-dev's scheduler/scheduler_config.json (FlowMatchEulerDiscreteScheduler).
FLUX_SCHNELL_SCHEDULER = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False,
                          "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                          "max_image_seq_len": 4096}
FLUX_DEV_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
                      "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}
# stabilityai/stable-diffusion-3-medium-diffusers scheduler/scheduler_config.json.
SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}

# FLUX.1 and SD3's VAE: 16 latent channels, shift factor, no quant convs (tiny widths).
TINY_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[16, 16], layers_per_block=1,
                latent_channels=16, norm_num_groups=8, sample_size=64, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False)
T5_TINY = dict(vocab_size=256, d_model=96, d_kv=8, d_ff=96, num_layers=2, num_heads=4,
               relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
               dropout_rate=0.0, is_encoder_decoder=False, use_cache=False)
FLUX_TINY = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=96, pooled_projection_dim=32, axes_dims_rope=[4, 6, 6])
SD3_TINY = dict(sample_size=32, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8,
                num_attention_heads=4, joint_attention_dim=96, caption_projection_dim=32, pooled_projection_dim=80,
                out_channels=16, pos_embed_max_size=32)
# The components of an SD3 pipeline folder: CLIP-L and OpenCLIP-G-like text encoders (overrides of the shared
# tiny CLIP config), T5, transformer, VAE.
SD3_COMPONENTS = dict(
    clip_l=dict(vocab_size=1000, num_hidden_layers=2, projection_dim=32),
    clip_g=dict(vocab_size=1000, num_hidden_layers=3, hidden_size=48, intermediate_size=96, num_attention_heads=4,
                hidden_act="gelu", projection_dim=48),
    t5=T5_TINY, transformer=SD3_TINY, vae=TINY_VAE)
# SD3.5-medium's transformer layout (stabilityai/stable-diffusion-3.5-medium: qk_norm "rms_norm", the second
# image self-attention in blocks 0-12 of 24, the last block context_pre_only as always), shrunk: 3 blocks, the
# first dual.  The position table is wider than the training grid (sample_size / patch_size), as in SD3.5.  The
# text encoders are narrower than sd3_tiny's (8 + 12 wide CLIPs, zero-padded to T5's 24) to keep the data small.
SD35_MEDIUM_TINY = dict(sample_size=16, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=4,
                        num_attention_heads=2, joint_attention_dim=24, caption_projection_dim=8,
                        pooled_projection_dim=20, out_channels=16, pos_embed_max_size=12, qk_norm="rms_norm",
                        dual_attention_layers=(0,))
SD35_MEDIUM_COMPONENTS = dict(
    clip_l=dict(num_hidden_layers=2, hidden_size=8, intermediate_size=16, num_attention_heads=2, projection_dim=8),
    clip_g=dict(num_hidden_layers=2, hidden_size=12, intermediate_size=24, num_attention_heads=2, hidden_act="gelu",
                projection_dim=12),
    t5=dict(T5_TINY, d_model=24, d_ff=24, num_layers=1), transformer=SD35_MEDIUM_TINY,
    vae=dict(TINY_VAE, block_out_channels=[8, 8], norm_num_groups=4))
# SD3.5-large's transformer layout (stabilityai/stable-diffusion-3.5-large: qk_norm "rms_norm", no dual
# attention), shrunk; a transformer folder of its own (sd3_transformer case only).
SD35_LARGE_TINY = dict(sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=4,
                       num_attention_heads=3, joint_attention_dim=32, caption_projection_dim=12,
                       pooled_projection_dim=20, out_channels=4, pos_embed_max_size=12, qk_norm="rms_norm")


def t5_tokenizer():
    """A T5-shaped SentencePiece-Unigram tokenizer (<pad> 0, </s> 1, <unk> 2, '▁'-prefixed words, single
    characters as fallback pieces), saved as tokenizer.json like every diffusers FLUX / SD3 folder."""
    from transformers import T5Tokenizer
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -3.0 - 0.1 * i) for i, w in enumerate(TINY_WORDS)]
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;&"
    pieces += [(c, -8.0 - 0.01 * i) for i, c in enumerate(chars)]
    pieces += [("▁" + c, -9.0 - 0.01 * i) for i, c in enumerate(chars)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def sd_vocab_tokenizer(mv, pad_token="<|endoftext|>"):
    tok, files = mv.tiny_tokenizer(TINY_WORDS, pad_token=pad_token)
    return tok, files


def build_flux(mv, rel_dir, guidance_embeds, seed):
    """A FluxPipeline folder: CLIPTextModel + T5 + FluxTransformer2DModel + 16-channel VAE."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel
    tok, tok_files = sd_vocab_tokenizer(mv)
    te = mv.build_model(CLIPTextModel, seed, seed + 1, mv.clip_text_config(tok, num_hidden_layers=2))
    t5 = mv.build_model(T5EncoderModel, seed, seed + 2, T5Config(**T5_TINY))
    transformer = mv.build_model(FluxTransformer2DModel, seed, seed + 3, **FLUX_TINY, guidance_embeds=guidance_embeds)
    vae = mv.build_model(AutoencoderKL, seed, seed + 4, **TINY_VAE)
    sched = FlowMatchEulerDiscreteScheduler.from_config(FLUX_DEV_SCHEDULER if guidance_embeds else FLUX_SCHNELL_SCHEDULER)
    pipe = FluxPipeline(scheduler=sched, vae=vae, text_encoder=te, tokenizer=tok, text_encoder_2=t5,
                        tokenizer_2=t5_tokenizer(), transformer=transformer)
    mv.save_sd_pipeline(pipe, rel_dir, {"tokenizer": tok_files})


def build_sd3(mv, rel_dir, seed, sizes=SD3_COMPONENTS):
    """A StableDiffusion3Pipeline folder: CLIP-L and OpenCLIP-G-like CLIPTextModelWithProjection (different widths,
    so the concatenation and zero padding are visible), T5, SD3Transformer2DModel, 16-channel VAE; `sizes` as
    SD3_COMPONENTS (a CLIP vocabulary is as large as its tokenizer's unless `vocab_size` says otherwise)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel
    tok, tok_files = sd_vocab_tokenizer(mv)
    tok2, tok2_files = sd_vocab_tokenizer(mv, pad_token="!")
    te = mv.build_model(CLIPTextModelWithProjection, seed, seed + 1,
                        mv.clip_text_config(tok, **{"vocab_size": len(tok), **sizes["clip_l"]}))
    te2 = mv.build_model(CLIPTextModelWithProjection, seed, seed + 2,
                         mv.clip_text_config(tok2, **{"vocab_size": len(tok2), **sizes["clip_g"]}))
    t5 = mv.build_model(T5EncoderModel, seed, seed + 3, T5Config(**sizes["t5"]))
    transformer = mv.build_model(SD3Transformer2DModel, seed, seed + 4, **sizes["transformer"])
    vae = mv.build_model(AutoencoderKL, seed, seed + 5, **sizes["vae"])
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER),
                                    vae=vae, text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2,
                                    text_encoder_3=t5, tokenizer_3=t5_tokenizer())
    mv.save_sd_pipeline(pipe, rel_dir, {"tokenizer": tok_files, "tokenizer_2": tok2_files})


def load_pipeline(mv, cls, path):
    import torch
    pipe = cls.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    for name, comp in pipe.components.items():
        if isinstance(comp, torch.nn.Module):
            mv.realign(comp)
    return pipe


def run_pipeline(mv, pipe, family, kw, latents_in, dtype):
    """Run the pipeline once, recording the transformer calls, scheduler steps and the decode."""
    import torch
    pipe = pipe.to(dtype)
    t_calls, steps, decodes = [], [], []
    h = pipe.transformer.register_forward_hook(
        lambda mod, args, kwargs, out: t_calls.append({k: mv.t2c(v) for k, v in kwargs.items() if torch.is_tensor(v)}
                                                      | {"out": mv.t2c(out[0])}), with_kwargs=True)
    orig_step, orig_decode = pipe.scheduler.step, pipe.vae.decode

    def step(model_output, timestep, sample, *a, **k):
        r = orig_step(model_output, timestep, sample, *a, **k)
        steps.append((mv.t2c(model_output), mv.t2c(sample), mv.t2c(r[0] if isinstance(r, tuple) else r.prev_sample)))
        return r

    def decode(z, *a, **k):
        r = orig_decode(z, *a, **k)
        decodes.append((mv.t2c(z), mv.t2c(r[0] if isinstance(r, tuple) else r.sample)))
        return r

    pipe.scheduler.step, pipe.vae.decode = step, decode
    latents = latents_in.to(dtype)
    if family == "flux":
        _, c, hh, ww = latents.shape
        latents = pipe._pack_latents(latents, 1, c, hh, ww)
    try:
        with torch.no_grad():
            out = pipe(PROMPT, latents=latents, output_type="np", **kw)
    finally:
        h.remove()
        pipe.scheduler.step, pipe.vae.decode = orig_step, orig_decode
    n = kw["num_inference_steps"]
    assert len(steps) == n == len(t_calls) and len(decodes) == 1

    def unpack(x):
        if family != "flux":
            return x
        return pipe._unpack_latents(x, kw["height"], kw["width"], pipe.vae_scale_factor)

    image = torch.from_numpy(out.images.copy())
    res = {
        "timesteps": mv.t2c(pipe.scheduler.timesteps).float(),
        "sigmas": mv.t2c(pipe.scheduler.sigmas).float(),
        "latents": torch.stack([unpack(steps[0][1])] + [unpack(s[2]) for s in steps]),
        "transformer_output": torch.stack([unpack(c["out"]) for c in t_calls]),
        "noise_pred": torch.stack([unpack(s[0]) for s in steps]),
        "decoded": decodes[0][1],
        "image": image,
    }
    first = t_calls[0]
    res["prompt_embeds"] = first["encoder_hidden_states"][-1:]
    res["pooled_prompt_embeds"] = first["pooled_projections"][-1:]
    if first["encoder_hidden_states"].shape[0] == 2:
        res["negative_prompt_embeds"] = first["encoder_hidden_states"][:1]
        res["negative_pooled_prompt_embeds"] = first["pooled_projections"][:1]
    if "guidance" in first:
        res["guidance"] = first["guidance"]
    return {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in res.items()}


COMPARED = ["prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds",
            "timesteps", "sigmas", "latents", "transformer_output", "noise_pred", "decoded",
            "image"]


def pipeline_case(mv, ctx, case_id, kind, rel, cls, family, kw, seed, description, extra=None):
    import torch
    path = os.path.join(ctx.out, rel)
    pipe = load_pipeline(mv, cls, path)
    f = pipe.vae_scale_factor
    c = pipe.vae.config.latent_channels
    # The latents a seeded torch generator draws first, as `stipple generate --seed` draws them.
    latents_in = mv.randn([1, c, kw["height"] // f, kw["width"] // f], seed)
    ref = run_pipeline(mv, pipe, family, kw, latents_in, torch.float32)
    f64 = run_pipeline(mv, load_pipeline(mv, cls, path), family, kw, latents_in, torch.float64)
    extra_tensors = extra(pipe) if extra else {}
    compare = [k for k in COMPARED if k in ref] + list(extra_tensors)
    tensors = {"latents_in": latents_in, **ref, **extra_tensors}
    gap_abs, gap_rel = 0.0, 0.0
    for k in compare:
        if k not in f64:
            continue
        d = float((ref[k].double() - f64[k].double()).abs().max())
        m = float(f64[k].double().abs().max())
        gap_abs = max(gap_abs, d)
        if m > 0:
            gap_rel = max(gap_rel, d / m)
    params = {
        "pipeline_class": cls.__name__,
        "scheduler_class": type(pipe.scheduler).__name__,
        "scheduler_config": mv.public_config(pipe.scheduler.config),
        "num_inference_steps": kw["num_inference_steps"],
        "guidance_scale": kw["guidance_scale"],
        "height": kw["height"],
        "width": kw["width"],
        "max_sequence_length": kw.get("max_sequence_length"),
        "latents_seed": seed,
        "output_type": "np",
        "f64_note": "the float64 rerun keeps FlowMatchEulerDiscreteScheduler.step's float32 upcast of the sample",
    }
    strings = {"prompt": PROMPT, "negative_prompt": kw.get("negative_prompt")}
    ctx.add_case(id=case_id, kind=kind, model=rel, tensors=tensors, compare=compare, params=params,
                 description=description, strings=strings,
                 measured={"f32_vs_f64": {"max_abs": gap_abs, "max_rel": gap_rel}})


def sd3_without_t5(mv, path):
    """diffusers' prompt embeddings when the pipeline is loaded without T5 (text_encoder_3=None): zeros."""
    import torch
    from diffusers import StableDiffusion3Pipeline

    def extra(_):
        pipe = StableDiffusion3Pipeline.from_pretrained(path, text_encoder_3=None, tokenizer_3=None)
        for comp in pipe.components.values():
            if isinstance(comp, torch.nn.Module):
                mv.realign(comp)
        with torch.no_grad():
            pe, _, _, _ = pipe.encode_prompt(PROMPT, PROMPT, PROMPT, do_classifier_free_guidance=False)
        return {"prompt_embeds_no_t5": pe}
    return extra


def build(mv, ctx):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline
    for tag, dev in (("flux_schnell_tiny", False), ("flux_dev_tiny", True)):
        build_flux(mv, os.path.join(ctx.out, "models", tag), dev, 20 + dev)
    build_sd3(mv, os.path.join(ctx.out, "models", "sd3_tiny"), 30)

    size = dict(height=48, width=32)
    pipeline_case(mv, ctx, "flux_schnell_tiny_4steps", "flux_pipeline", "models/flux_schnell_tiny", FluxPipeline,
                  "flux", dict(num_inference_steps=4, guidance_scale=0.0, **size), 40,
                  "tiny FluxPipeline without guidance embedding (schnell-like), 4 steps, 32x48, seed 40")
    pipeline_case(mv, ctx, "flux_dev_tiny_3steps", "flux_pipeline", "models/flux_dev_tiny", FluxPipeline, "flux",
                  dict(num_inference_steps=3, guidance_scale=4.0, **size), 41,
                  "tiny FluxPipeline with guidance embedding (dev-like, dynamic shift), guidance 4.0, 3 steps, "
                  "32x48, seed 41")
    sd3_path = os.path.join(ctx.out, "models", "sd3_tiny")
    pipeline_case(mv, ctx, "sd3_tiny_3steps", "sd3_pipeline", "models/sd3_tiny", StableDiffusion3Pipeline, "sd3",
                  dict(num_inference_steps=3, guidance_scale=5.0, negative_prompt=SD3_NEGATIVE, **size), 42,
                  "tiny StableDiffusion3Pipeline (CLIP-L 32 + CLIP-G 48 wide, T5 96 wide), CFG 5.0, negative "
                  f"prompt {SD3_NEGATIVE!r}, 3 steps, 32x48, seed 42", extra=sd3_without_t5(mv, sd3_path))
    sd35_path = os.path.join(ctx.out, "models", "sd35_medium_tiny")
    build_sd3(mv, sd35_path, 50, SD35_MEDIUM_COMPONENTS)
    pipeline_case(mv, ctx, "sd35_medium_tiny_2steps", "sd3_pipeline", "models/sd35_medium_tiny",
                  StableDiffusion3Pipeline, "sd3", dict(num_inference_steps=2, guidance_scale=4.5, height=32, width=16),
                  52, "tiny StableDiffusion3Pipeline with an SD3.5-medium-like transformer (qk_norm rms_norm, dual "
                  "attention in block 0 of 3), CFG 4.5, no negative prompt, 2 steps, 16x32, seed 52")
    sd35_transformer_cases(mv, ctx, sd35_path)


def sd35_transformer_cases(mv, ctx, sd35_medium_path):
    """Single forward passes of SD3.5-like SD3Transformer2DModel (kind sd3_transformer of ../vectors/README.md
    5.9): the medium-like transformer of the sd35_medium_tiny pipeline, and a large-like one saved on its own.
    Each model is run as reloaded from its folder."""
    from diffusers import SD3Transformer2DModel
    large_rel = "models/sd35_large_tiny_transformer"
    mv.build_model(SD3Transformer2DModel, 60, 61, **SD35_LARGE_TINY).save_pretrained(
        os.path.join(ctx.out, large_rel), safe_serialization=True)
    large = mv.load_model(SD3Transformer2DModel, os.path.join(ctx.out, large_rel))
    mv.sd3_case(ctx, "sd35_large_tiny", large_rel, large, 2, (8, 12), 20, [500.0, 37.5], 62,
                "tiny SD3.5-large-like SD3Transformer2DModel (qk_norm rms_norm, 2 joint blocks, the last "
                "context_pre_only), patch 2, 8x12 latents, batch 2")
    medium_rel = os.path.relpath(os.path.join(sd35_medium_path, "transformer"), ctx.out)
    medium = mv.load_model(SD3Transformer2DModel, os.path.join(ctx.out, medium_rel))
    mv.sd3_case(ctx, "sd35_medium_tiny", medium_rel, medium, 2, (8, 12), 20, [500.0, 37.5], 63,
                "the SD3.5-medium-like transformer of models/sd35_medium_tiny (qk_norm rms_norm, dual attention "
                "in block 0 of 3, the last context_pre_only), patch 2, 8x12 latents, batch 2")


def worker(out_dir):
    import platform
    mv = shared()
    mv.worker_imports()
    import diffusers
    import numpy as np
    import torch
    import transformers
    for sub in ("cases", "models"):
        shutil.rmtree(os.path.join(out_dir, sub), ignore_errors=True)
    ctx = mv.Ctx(out_dir)
    build(mv, ctx)
    versions = {
        "python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "tokenizers": importlib.import_module("tokenizers").__version__,
        "numpy": np.__version__, "safetensors": importlib.import_module("safetensors").__version__,
        "cpu": mv.cpu_name(), "machine": platform.machine(),
    }
    with open(os.path.join(out_dir, "_worker.json"), "w") as f:
        json.dump({"versions": versions, "cases": ctx.cases}, f, indent=1, allow_nan=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("out_dir")
    a = ap.parse_args()
    if a.worker:
        worker(os.path.abspath(a.out_dir))
    else:
        orchestrate(a.out_dir)


if __name__ == "__main__":
    main()
