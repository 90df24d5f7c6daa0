"""Checks the Rust trainer's forward and backward passes against PyTorch autograd.

`cargo run --release -p stipple-train --example grad_dump` runs one denoiser training step of the
shipped text encoder and DiT (float32, fixed inputs) and saves its inputs, outputs, loss and the
gradient of every parameter. This script recomputes the same step from the same weights in
float64 with an independent, functional PyTorch implementation of the two networks and prints
the relative difference of the outputs and of each parameter's gradient.

Not part of Stipple (the engine never runs Python). Measured 2026-11-27 on the 4x4-patch
weights: context and prediction agree to 2e-7 and 3e-7, the loss to 8 digits, the median
parameter gradient to 8e-7 and the worst to 6e-6 (the `to_k` biases, whose true gradient is zero
because softmax ignores a shift shared by all keys, show only rounding noise of 1e-19).

usage: python research/gradient_check.py [dump.safetensors]
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

torch.set_default_dtype(torch.float64)
MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "stipple-default")
te = {k: v.double().requires_grad_() for k, v in load_file(f"{MODEL}/text_encoder/model.safetensors").items()}
tr = {k: v.double().requires_grad_() for k, v in load_file(f"{MODEL}/transformer/diffusion_pytorch_model.safetensors").items()}
TC = json.load(open(f"{MODEL}/text_encoder/config.json"))
DC = json.load(open(f"{MODEL}/transformer/config.json"))


def lin(W, p, x):
    return x @ W[p + ".weight"].T + W[p + ".bias"]


def ln(W, p, x):
    return F.layer_norm(x, x.shape[-1:], W[p + ".weight"], W[p + ".bias"], eps=1e-6)


def attn(W, p, x, ctx, heads):
    b, s, d = x.shape
    split = lambda t: t.view(b, t.shape[1], heads, d // heads).transpose(1, 2)
    q, k, v = split(lin(W, p + ".to_q", x)), split(lin(W, p + ".to_k", ctx)), split(lin(W, p + ".to_v", ctx))
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), -1)
    return lin(W, p + ".to_out", (a @ v).transpose(1, 2).reshape(b, s, d))


def mlp(W, p, x, gated=False):
    h = lin(W, p + ".fc1", x)
    if gated:
        a, g = h.chunk(2, -1)
        return lin(W, p + ".fc2", F.silu(a) * g)
    return lin(W, p + ".fc2", F.silu(h))


def text(ids):
    x = te["token_embedding.weight"][ids] + te["position_embedding"][: ids.shape[1]]
    for i in range(TC["num_layers"]):
        p = f"layers.{i}"
        h = ln(te, p + ".norm1", x)
        x = x + attn(te, p + ".attn", h, h, TC["num_heads"])
        x = x + mlp(te, p + ".mlp", ln(te, p + ".norm2", x))
    x = ln(te, "final_norm", x)
    return x, x.mean(1)


def sincos_2d(dim, grid):
    q = dim // 4
    om = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float64) / q)
    enc = lambda c: torch.cat([torch.sin(c[:, None] * om), torch.cos(c[:, None] * om)], 1)
    c = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(c, c, indexing="ij")
    return torch.cat([enc(cols.flatten()), enc(rows.flatten())], 1)


def timestep_features(t, dim):
    half = dim // 2
    a = t[:, None] * torch.exp(-math.log(10000) * torch.arange(half) / half)
    return torch.cat([torch.cos(a), torch.sin(a)], 1)


def modulate(x, shift, scale):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift


def dit(x, t, ctx, pooled):
    P, D, H, C, side = DC["patch_size"], DC["hidden_size"], DC["num_heads"], DC["in_channels"], DC["sample_size"]
    b, g = x.shape[0], side // P
    tok = x.view(b, C, g, P, g, P).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, C * P * P)
    h = lin(tr, "patch_embed", tok) + sincos_2d(D, g)
    temb = lin(tr, "time_embed.linear_2", F.silu(lin(tr, "time_embed.linear_1", timestep_features(t, DC["timestep_features"]))))
    c = F.silu(temb + lin(tr, "pooled_proj", pooled))
    for i in range(DC["depth"]):
        p = f"blocks.{i}"
        m = lin(tr, p + ".adaln_modulation", c).unsqueeze(1).chunk(6, 2)
        a = modulate(h, m[0], m[1])
        h = h + m[2] * attn(tr, p + ".attn", a, a, H)
        h = h + attn(tr, p + ".cross_attn", ln(tr, p + ".cross_norm", h), ctx, H)
        h = h + m[5] * mlp(tr, p + ".mlp", modulate(h, m[3], m[4]), DC.get("gated_mlp", False))
    s, sc = lin(tr, "final_modulation", c).unsqueeze(1).chunk(2, 2)
    o = lin(tr, "final_proj", modulate(h, s, sc))
    return o.view(b, g, g, C, P, P).permute(0, 3, 1, 4, 2, 5).reshape(b, C, side, side)


def main():
    d = load_file(sys.argv[1] if len(sys.argv) > 1 else "/tmp/grad_dump.safetensors")
    ctx, pooled = text(d["in.ids"].long())
    pred = dit(d["in.noisy"].double(), d["in.t"].double(), ctx, pooled)
    loss = (((pred - d["in.target"].double()) ** 2) * d["in.w"].double()).mean()
    loss.backward()
    rel = lambda a, b: float((a - b).norm() / (b.norm() + 1e-30))
    print("context: relative difference %.1e" % rel(d["out.context"].double(), ctx.detach()))
    print("prediction: relative difference %.1e" % rel(d["out.pred"].double(), pred.detach()))
    print("loss: rust %.8f, torch %.8f" % (float(d["out.loss"]), float(loss.detach())))
    rows = []
    for W, prefix in ((te, "text_encoder."), (tr, "transformer.")):
        for k, v in W.items():
            g = d.get("grad." + prefix + k)
            if g is None:
                print("no Rust gradient for", prefix + k)
                continue
            rows.append((rel(g.double(), v.grad), float(v.grad.norm()), prefix + k))
    rows.sort()
    print("parameters: %d, median relative difference %.1e" % (len(rows), rows[len(rows) // 2][0]))
    print("largest differences among gradients above 1e-12:")
    for r, norm, name in [r for r in rows if r[1] > 1e-12][-5:]:
        print("  %.1e  %s  (|g| %.2e)" % (r, name, norm))


if __name__ == "__main__":
    main()
