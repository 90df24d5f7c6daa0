#!/usr/bin/env python3
"""Time one forward pass of diffusers' UNet2DConditionModel at real Stable Diffusion 1.5 size on the CPU.

The model is built from the published SD 1.5 `unet/config.json` (hard-coded below, nothing is downloaded)
with seeded random weights: the cost of a forward pass does not depend on the weight values. Each image size
runs in its own subprocess so that the reported peak RSS belongs to that size alone.

Per size: batch 2 (classifier-free guidance), float32, latent = size / 8, encoder_hidden_states [2, 77, 768],
torch.no_grad; one warm-up pass, then --runs timed passes. Prints one JSON object per size:
{"impl": "diffusers", "torch": ..., "diffusers": ..., "size": 512, "batch": 2, "runs": 3,
 "median_s": ..., "min_s": ..., "max_s": ..., "peak_rss_mb": ..., "threads": ...}

Usage: python bench/diffusers_unet.py [--sizes 512 256] [--runs 3] [--threads N]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

# runwayml/stable-diffusion-v1-5, unet/config.json: every key except `_class_name` and `_diffusers_version`.
SD15_UNET_CONFIG = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

BATCH = 2  # classifier-free guidance: unconditional + conditional
TEXT_TOKENS = 77
VAE_FACTOR = 8
TIMESTEP = 981  # an early timestep; the cost of a pass does not depend on it


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 256], help="image sizes in pixels (square)")
    p.add_argument("--runs", type=int, default=3, help="timed forward passes per size (after one warm-up)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (default: all cores)")
    p.add_argument("--one-size", type=int, help=argparse.SUPPRESS)  # internal: the per-size subprocess
    args = p.parse_args(argv)
    if args.runs < 1 or args.threads < 1:
        p.error("--runs and --threads must be at least 1")
    for size in args.sizes + ([args.one_size] if args.one_size else []):
        if size <= 0 or size % 64 != 0:
            p.error(f"size {size}: must be a positive multiple of 64 (the UNet downsamples the latent 3 times)")
    return args


def bench_one_size(size, runs, threads):
    import diffusers
    import torch
    from diffusers import UNet2DConditionModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET_CONFIG).eval()
    latent = size // VAE_FACTOR
    sample = torch.randn(BATCH, SD15_UNET_CONFIG["in_channels"], latent, latent)
    context = torch.randn(BATCH, TEXT_TOKENS, SD15_UNET_CONFIG["cross_attention_dim"])
    timestep = torch.tensor([TIMESTEP] * BATCH)

    times = []
    with torch.no_grad():
        for i in range(runs + 1):
            start = time.perf_counter()
            out = unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]
            elapsed = time.perf_counter() - start
            if i > 0:  # the first pass is the warm-up
                times.append(elapsed)
    assert out.shape == sample.shape, f"unexpected output shape {tuple(out.shape)}"

    peak_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return {
        "impl": "diffusers",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "size": size,
        "batch": BATCH,
        "runs": runs,
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
        "peak_rss_mb": round(peak_rss_kb / 1024, 1),
        "threads": torch.get_num_threads(),
    }


def main(argv):
    args = parse_args(argv)
    if args.one_size:
        print(json.dumps(bench_one_size(args.one_size, args.runs, args.threads)), flush=True)
        return 0
    for size in args.sizes:
        cmd = [sys.executable, os.path.abspath(__file__), "--one-size", str(size),
               "--runs", str(args.runs), "--threads", str(args.threads)]
        result = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if result.returncode != 0:
            print(f"size {size}: benchmark subprocess failed with exit code {result.returncode}", file=sys.stderr)
            return result.returncode
        sys.stdout.write(result.stdout)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
