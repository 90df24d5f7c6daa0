"""Research replica of `stipple train`'s denoiser stage in PyTorch, to sweep training variants of
the default model on a GPU in minutes (the Rust trainer needs ~70 min per run on 2 cores).

Not part of Stipple: the engine never runs Python. It reads the shipped autoencoder and
tokenizer from models/stipple-default, renders scenes like crates/stipple-train/src/scene.rs,
captions them like caption.rs, trains the DiT + text encoder as train.rs does (same shapes,
initialisation, AdamW, EMA, Min-SNR ε loss), samples with DDIM 20 / CFG 5 and scores the
decoded images with a checker like checker.rs (simplified: no largest-region step).

usage: python research/position_sweep.py VARIANT [steps] [out.json]
"""
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODEL = os.path.join(ROOT, "models", "stipple-default")
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")

PALETTE = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
    "orange": (240, 140, 30), "purple": (140, 60, 190), "white": (245, 245, 245), "black": (20, 20, 20),
}
COLOURS = list(PALETTE)
PAL = torch.tensor([PALETTE[c] for c in COLOURS], dtype=torch.float32, device=DEV)
SHAPES = ["circle", "square", "triangle"]
SIZES = {"small": 28.0, "large": 56.0}
CENTRES = [22.0, 64.0, 106.0]
PHRASES = [["in the top left", "at the top", "in the top right"], ["on the left", "in the center", "on the right"],
           ["in the bottom left", "at the bottom", "in the bottom right"]]


# ---------------------------------------------------------------- scenes and captions
def random_scenes(rng, n):
    out = []
    for _ in range(n):
        bg = rng.randrange(8)
        obj = rng.randrange(7)
        obj = obj + (obj >= bg)
        out.append(dict(bg=bg, obj=obj, shape=rng.randrange(3), size=rng.randrange(2), row=rng.randrange(3),
                        col=rng.randrange(3), jx=rng.uniform(-4, 4), jy=rng.uniform(-4, 4)))
    return out


_SUB = (torch.arange(512, device=DEV, dtype=torch.float32) + 0.5) / 4.0  # 4x4 sub-samples per pixel


def render(scenes):
    """[n, 3, 128, 128] in [-1, 1], objects blended by 4x4 sub-sample coverage, rounded to u8."""
    n = len(scenes)
    t = lambda k: torch.tensor([s[k] for s in scenes], dtype=torch.float32, device=DEV).view(n, 1, 1)
    cx = torch.tensor([CENTRES[s["col"]] + s["jx"] for s in scenes], device=DEV).view(n, 1, 1)
    cy = torch.tensor([CENTRES[s["row"]] + s["jy"] for s in scenes], device=DEV).view(n, 1, 1)
    w = torch.tensor([SIZES["small" if s["size"] == 0 else "large"] for s in scenes], device=DEV).view(n, 1, 1)
    shape = t("shape")
    aspect = torch.where(shape == 2, torch.full_like(shape, math.sqrt(3) / 2), torch.ones_like(shape))
    hw, hh = w / 2, w * aspect / 2
    dx = _SUB.view(1, 1, 512) - cx
    dy = _SUB.view(1, 512, 1) - cy
    square = (dx.abs() <= hw) & (dy.abs() <= hh)
    circle = dx * dx + dy * dy <= hw * hw
    down = dy + hh
    tri = (down >= 0) & (down <= 2 * hh) & (dx.abs() <= hw * down / (2 * hh))
    inside = torch.where(shape == 0, circle, torch.where(shape == 1, square, tri)).float()
    cov = F.avg_pool2d(inside.unsqueeze(1), 4)  # [n,1,128,128]
    bg = PAL[torch.tensor([s["bg"] for s in scenes], device=DEV)].view(n, 3, 1, 1)
    fg = PAL[torch.tensor([s["obj"] for s in scenes], device=DEV)].view(n, 3, 1, 1)
    img = torch.round(bg * (1 - cov) + fg * cov)
    return img / 127.5 - 1.0


def article(word):
    return ("an " if word[0] in "aeiou" else "a ") + word


def caption(s, rng, drop_attr=0.15, drop_caption=0.1, synonym=0.15, full=False):
    if full:
        drop_attr, drop_caption, synonym = 0.0, 0.0, 0.0
    if rng.random() < drop_caption:
        return ""
    keep = [rng.random() >= drop_attr for _ in range(5)]
    size = "large" if s["size"] == 1 else "small"
    if rng.random() < synonym:
        size = {"large": "big", "small": "little"}[size]
    pos = PHRASES[s["row"]][s["col"]]
    if pos == "in the center" and rng.random() < synonym:
        pos = "in the middle"
    size, colour, shape, pos, bg = [v if k else None for v, k in
                                    zip([size, COLOURS[s["obj"]], SHAPES[s["shape"]], pos, COLOURS[s["bg"]]], keep)]
    noun = article(" ".join(w for w in [size, colour, shape or "shape"] if w))
    template = 0 if full else rng.randrange(5)
    if template == 1 and bg:
        parts = [noun, f"on {article(bg)} background", pos]
    elif template == 2 and bg:
        parts = [f"{bg} background with", noun, pos]
    elif template == 3 and bg:
        parts = [noun, pos, f", {bg} background"]
    elif template == 4:
        parts = ["a picture of", noun, pos, f"on {article(bg)} background" if bg else None]
    else:
        parts = [noun, pos, f"on {article(bg)} background" if bg else None]
    return " ".join(p for p in parts if p).replace(" ,", ",")


class Tokens:
    def __init__(self, max_length=20):
        vocab = json.load(open(os.path.join(MODEL, "tokenizer", "tokenizer.json")))["model"]["vocab"]
        self.vocab, self.max_length = vocab, max_length

    def __call__(self, captions):
        out = torch.zeros(len(captions), self.max_length, dtype=torch.long)
        for i, c in enumerate(captions):
            words = c.lower().replace(",", " , ").split()
            ids = [self.vocab.get(w, 1) for w in words][: self.max_length]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out.to(DEV)


# ---------------------------------------------------------------- the shipped autoencoder
class AE:
    def __init__(self):
        self.w = {k: v.float().to(DEV) for k, v in load_file(os.path.join(MODEL, "vae", "diffusion_pytorch_model.safetensors")).items()}
        self.cfg = json.load(open(os.path.join(MODEL, "vae", "config.json")))

    def conv(self, x, name, stride=1):
        return F.conv2d(x, self.w[name + ".weight"], self.w[name + ".bias"], stride=stride, padding=1)

    def gn(self, x, name):
        return F.group_norm(x, self.cfg["norm_groups"], self.w[name + ".weight"], self.w[name + ".bias"], eps=1e-6)

    def res(self, x, name):
        h = self.conv(F.silu(self.gn(x, name + ".norm1")), name + ".conv1")
        return x + self.conv(F.silu(self.gn(h, name + ".norm2")), name + ".conv2")

    @torch.no_grad()
    def encode(self, img, gen=None):
        x = F.pixel_unshuffle(img, 4)
        h = self.conv(x, "encoder.conv_in")
        levels = len(self.cfg["channels"])
        for i in range(levels):
            for j in range(self.cfg["encoder_blocks"]):
                h = self.res(h, f"encoder.levels.{i}.blocks.{j}")
            if i < levels - 1:
                h = self.conv(h, f"encoder.levels.{i}.downsample", stride=2)
        m = self.conv(F.silu(self.gn(h, "encoder.norm_out")), "encoder.conv_out")
        mean, logvar = m[:, :4], m[:, 4:].clamp(-30, 20)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, device=DEV, generator=gen)
        return (z - self.cfg["shift_factor"]) * self.cfg["scaling_factor"]

    @torch.no_grad()
    def decode(self, lat):
        z = lat / self.cfg["scaling_factor"] + self.cfg["shift_factor"]
        h = self.conv(z, "decoder.conv_in")
        levels = len(self.cfg["channels"])
        for i in reversed(range(levels)):
            for j in range(self.cfg["decoder_blocks"]):
                h = self.res(h, f"decoder.levels.{i}.blocks.{j}")
            if i > 0:
                h = self.conv(F.interpolate(h, scale_factor=2, mode="nearest"), f"decoder.levels.{i}.upsample")
        h = self.conv(F.silu(self.gn(h, "decoder.norm_out")), "decoder.conv_out")
        return F.pixel_shuffle(h, 4)


# ---------------------------------------------------------------- checker (like checker.rs)
@torch.no_grad()
def read(img):
    """img [n,3,128,128] in [-1,1] → list of dicts (bg, obj, shape, size, row, col) or None."""
    px = ((img.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).reshape(img.shape[0], -1, 3)
    out = []
    for p in px:
        d = torch.cdist(p, PAL)
        dist, near = d.min(1)
        bg = int(torch.bincount(near, minlength=8).argmax())
        cand = near[(near != bg) & (dist < 60)]
        if cand.numel() == 0:
            out.append(dict(bg=bg))
            continue
        obj = int(torch.bincount(cand, minlength=8).argmax())
        bg_rgb, fg_rgb = p[near == bg].mean(0), p[near == obj].mean(0)
        axis = fg_rgb - bg_rgb
        tt = ((p - bg_rgb) @ axis) / axis.dot(axis).clamp(min=1)
        mask = (tt > 0.5).view(128, 128)
        if mask.sum() < 20:
            out.append(dict(bg=bg))
            continue
        ys, xs = torch.nonzero(mask, as_tuple=True)
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
        bw, bh = x1 - x0, y1 - y0
        fill = float(mask.sum()) / max(bw * bh, 1)
        # circle fills π/4, square 1, triangle 1/2 of the box; a triangle's box is √3/2 as tall as wide
        shape = int(np.argmin([abs(fill - math.pi / 4), abs(fill - 1.0), abs(fill - 0.5)]))
        width = max(bw, bh) if shape != 2 else max(bw, bh / (math.sqrt(3) / 2))
        cxp, cyp = (x0 + x1) / 2, (y0 + y1) / 2
        band = lambda v: min(2, max(0, int(v // (128 / 3))))
        out.append(dict(bg=bg, obj=obj, shape=shape, size=int(width >= 42), row=band(cyp), col=band(cxp)))
    return out


def score(scenes, readings):
    keys = dict(background="bg", colour="obj", shape="shape", size="size")
    res = {k: 0 for k in list(keys) + ["position"]}
    for s, r in zip(scenes, readings):
        for name, k in keys.items():
            res[name] += int(r.get(k) == s[k])
        res["position"] += int(r.get("row") == s["row"] and r.get("col") == s["col"])
    n = len(scenes)
    res = {k: 100.0 * v / n for k, v in res.items()}
    res["all"] = sum(res.values()) / 5
    return res


# ---------------------------------------------------------------- the model (like stipple_dit.rs / stipple_text.rs)
def xavier(lin):
    nn.init.xavier_uniform_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


def zero(lin):
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


class Attention(nn.Module):
    def __init__(self, d, dc, heads, zero_out):
        super().__init__()
        self.q, self.k, self.v = xavier(nn.Linear(d, d)), xavier(nn.Linear(dc, d)), xavier(nn.Linear(dc, d))
        self.o = zero(nn.Linear(d, d)) if zero_out else xavier(nn.Linear(d, d))
        self.h = heads

    def forward(self, x, ctx=None):
        ctx = x if ctx is None else ctx
        b, s, d = x.shape
        sp = lambda t: t.view(b, t.shape[1], self.h, d // self.h).transpose(1, 2)
        o = F.scaled_dot_product_attention(sp(self.q(x)), sp(self.k(ctx)), sp(self.v(ctx)))
        return self.o(o.transpose(1, 2).reshape(b, s, d))


class Mlp(nn.Module):
    def __init__(self, d, hidden, zero_out=False):
        super().__init__()
        self.fc1 = xavier(nn.Linear(d, hidden))
        self.fc2 = zero(nn.Linear(hidden, d)) if zero_out else xavier(nn.Linear(hidden, d))

    def forward(self, x):
        return self.fc2(F.silu(self.fc1(x)))


class TextEncoder(nn.Module):
    def __init__(self, vocab, length=20, d=128, layers=2, heads=4):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        nn.init.normal_(self.tok.weight, std=0.02)
        self.pos = nn.Parameter(torch.randn(length, d) * 0.02)
        self.layers = nn.ModuleList()
        for _ in range(layers):
            self.layers.append(nn.ModuleList([nn.LayerNorm(d), Attention(d, d, heads, False), nn.LayerNorm(d), Mlp(d, 4 * d)]))
        self.norm = nn.LayerNorm(d)

    def forward(self, ids):
        x = self.tok(ids) + self.pos[: ids.shape[1]]
        for n1, a, n2, m in self.layers:
            x = x + a(n1(x))
            x = x + m(n2(x))
        x = self.norm(x)
        return x, x.mean(1)


def sincos_2d(d, grid):
    q = d // 4
    om = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float64) / q)
    enc = lambda p: torch.cat([torch.sin(p[:, None] * om), torch.cos(p[:, None] * om)], 1)
    c = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(c, c, indexing="ij")
    return torch.cat([enc(cols.flatten()), enc(rows.flatten())], 1).float()


def timestep_features(t, dim=256):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], 1)


def modulate(x, shift, scale):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift


class Block(nn.Module):
    def __init__(self, d, heads, dc, cross_zero=True, joint=False):
        super().__init__()
        self.mod = zero(nn.Linear(d, 6 * d))
        self.attn = Attention(d, d, heads, False)
        self.joint = joint
        if not joint:
            self.cross_norm = nn.LayerNorm(d)
            self.cross = Attention(d, dc, heads, cross_zero)
        else:
            self.ctx_proj = xavier(nn.Linear(dc, d))
        self.mlp = Mlp(d, 4 * d)

    def forward(self, x, c, ctx):
        m = self.mod(c).unsqueeze(1).chunk(6, 2)
        h = modulate(x, m[0], m[1])
        if self.joint:
            # text tokens join the self-attention as extra keys/values
            kv = torch.cat([h, self.ctx_proj(ctx)], 1)
            b, s, d = h.shape
            a = self.attn
            sp = lambda t: t.view(b, t.shape[1], a.h, d // a.h).transpose(1, 2)
            o = F.scaled_dot_product_attention(sp(a.q(h)), sp(a.k(kv)), sp(a.v(kv)))
            x = x + m[2] * a.o(o.transpose(1, 2).reshape(b, s, d))
        else:
            x = x + m[2] * self.attn(h)
            x = x + self.cross(self.cross_norm(x), ctx)
        return x + m[5] * self.mlp(modulate(x, m[3], m[4]))


class Dit(nn.Module):
    def __init__(self, d=192, depth=6, heads=6, dc=128, cross_zero=True, joint=False):
        super().__init__()
        self.patch = xavier(nn.Linear(16, d))
        self.t1, self.t2 = xavier(nn.Linear(256, d)), xavier(nn.Linear(d, d))
        self.pooled = xavier(nn.Linear(dc, d))
        self.blocks = nn.ModuleList([Block(d, heads, dc, cross_zero, joint) for _ in range(depth)])
        self.fmod = zero(nn.Linear(d, 2 * d))
        self.out = zero(nn.Linear(d, 16))
        self.register_buffer("pos", sincos_2d(d, 8))

    def forward(self, x, t, ctx, pooled):
        b = x.shape[0]
        tok = x.view(b, 4, 8, 2, 8, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, 64, 16)
        h = self.patch(tok) + self.pos
        c = F.silu(self.t2(F.silu(self.t1(timestep_features(t)))) + self.pooled(pooled))
        for blk in self.blocks:
            h = blk(h, c, ctx)
        s, sc = self.fmod(c).unsqueeze(1).chunk(2, 2)
        o = self.out(modulate(h, s, sc))
        return o.view(b, 8, 8, 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, 4, 16, 16)


# ---------------------------------------------------------------- training and evaluation
BETAS = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
ALPHAS = torch.cumprod(1 - BETAS, 0)


def lr_at(step, o):
    if step < o["warmup"]:
        return o["lr"] * (step + 1) / o["warmup"]
    p = min(1.0, (step - o["warmup"]) / max(1, o["steps"] - o["warmup"]))
    return o["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def sample(dit, text, tokens, ae, captions, seed, steps=20, cfg=5.0, pred="eps"):
    n = len(captions)
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(n, 4, 16, 16, device=DEV, generator=g)
    ctx, pooled = text(tokens(list(captions) + [""] * n))
    ts = [int(round(999 - i * 1000 / steps)) for i in range(steps)]  # trailing spacing
    ac = ALPHAS.float().to(DEV)
    for i, t in enumerate(ts):
        tt = torch.full((2 * n,), float(t), device=DEV)
        out = dit(torch.cat([x, x]), tt, ctx, pooled)
        cond, unc = out[:n], out[n:]
        e = unc + cfg * (cond - unc)
        a = ac[t]
        if pred == "v":
            x0 = a.sqrt() * x - (1 - a).sqrt() * e
            eps = (1 - a).sqrt() * x + a.sqrt() * e
        else:
            x0 = (x - (1 - a).sqrt() * e) / a.sqrt()
            eps = e
        a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, device=DEV)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return ae.decode(x)


def evaluate(dit, text, tokens, ae, pred, n=200):
    rng = random.Random(12345)
    scenes = random_scenes(rng, n)
    caps = [caption(s, rng, full=True) for s in scenes]
    imgs = torch.cat([sample(dit, text, tokens, ae, caps[i:i + 100], seed=i, pred=pred) for i in range(0, n, 100)])
    return score(scenes, read(imgs))


VARIANTS = {
    "baseline": {},
    "highnoise": {"t_high": 0.5},          # half of the timesteps drawn from 700..999
    "lr2e3": {"lr": 2e-3},
    "batch64": {"batch": 64, "steps_scale": 0.5, "lr": 1.2e-3},
    "cross_nonzero": {"cross_zero": False},
    "joint": {"joint": True},
    "v": {"pred": "v"},
    "long": {"steps_scale": 2.0},
    "cross_nonzero_highnoise": {"cross_zero": False, "t_high": 0.5},
    "joint_highnoise": {"joint": True, "t_high": 0.5},
    # the same images in more, smaller steps; and what the spare CPU budget buys at batch 32
    "b16": {"batch": 16, "steps_scale": 2.0},
    "b16_lr57": {"batch": 16, "steps_scale": 2.0, "lr": 5.7e-4},
    "b32_9k": {"steps_scale": 1.5},
}


def main():
    name = sys.argv[1]
    base_steps = int(sys.argv[2]) if len(sys.argv) > 2 else 6000
    out_path = sys.argv[3] if len(sys.argv) > 3 else None
    v = VARIANTS[name]
    torch.manual_seed(1)
    rng = random.Random(1)
    tokens = Tokens()
    ae = AE()
    text = TextEncoder(len(tokens.vocab)).to(DEV)
    dit = Dit(cross_zero=v.get("cross_zero", True), joint=v.get("joint", False)).to(DEV)
    params = list(text.named_parameters(prefix="text")) + list(dit.named_parameters(prefix="dit"))
    decay = [p for n, p in params if p.dim() >= 2 and "tok" not in n and not n.endswith(".pos")]
    no_decay = [p for n, p in params if not (p.dim() >= 2 and "tok" not in n and not n.endswith(".pos"))]
    o = dict(lr=v.get("lr", 8e-4), warmup=300, steps=int(base_steps * v.get("steps_scale", 1.0)))
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=o["lr"], betas=(0.9, 0.999), eps=1e-8)
    all_params = [p for _, p in params]
    ema = [p.detach().clone() for p in all_params]
    bs = v.get("batch", 32)
    pred = v.get("pred", "eps")
    ac = ALPHAS.float().to(DEV)
    snr = ac / (1 - ac)
    weight = (torch.clamp(snr, max=5.0) + 1) / (snr + 1) if pred == "v" else torch.clamp(snr, max=5.0) / snr
    weight = weight.clamp(max=1.0)
    gen = torch.Generator(device=DEV).manual_seed(7)
    log = {"variant": name, "config": v, "steps": o["steps"], "evals": []}
    evals_at = {int(o["steps"] * f) for f in (0.25, 0.5, 0.75, 1.0)}
    start = time.time()
    for step in range(o["steps"]):
        scenes = random_scenes(rng, bs)
        lat = ae.encode(render(scenes), gen)
        ids = tokens([caption(s, rng) for s in scenes])
        t = torch.randint(0, 1000, (bs,), device=DEV, generator=gen)
        if v.get("t_high"):
            high = torch.rand(bs, device=DEV, generator=gen) < v["t_high"]
            t = torch.where(high, torch.randint(700, 1000, (bs,), device=DEV, generator=gen), t)
        a = ac[t].view(bs, 1, 1, 1)
        eps = torch.randn(lat.shape, device=DEV, generator=gen)
        noisy = a.sqrt() * lat + (1 - a).sqrt() * eps
        ctx, pooled = text(ids)
        out = dit(noisy, t.float(), ctx, pooled)
        target = a.sqrt() * eps - (1 - a).sqrt() * lat if pred == "v" else eps
        loss = (((out - target) ** 2).mean((1, 2, 3)) * weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(all_params, 1.0)
        for g_ in opt.param_groups:
            g_["lr"] = lr_at(step, o)
        opt.step()
        d = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in all_params], 1 - d)
        if step + 1 in evals_at:
            live = [p.detach().clone() for p in all_params]
            with torch.no_grad():
                for p, e in zip(all_params, ema):
                    p.copy_(e)
            res = evaluate(dit, text, tokens, ae, pred)
            with torch.no_grad():
                for p, l in zip(all_params, live):
                    p.copy_(l)
            res.update(step=step + 1, loss=float(loss.detach()), secs=round(time.time() - start, 1))
            log["evals"].append(res)
            print(name, json.dumps(res), flush=True)
            if out_path:
                json.dump(log, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    if sys.argv[1] == "selfcheck":
        # the checker on rendered scenes and on autoencoder round trips
        rng = random.Random(3)
        scenes = random_scenes(rng, 200)
        img = render(scenes)
        print("rendered", score(scenes, read(img)))
        ae = AE()
        print("autoencoder", score(scenes, read(ae.decode(ae.encode(img)))))
        lat = ae.encode(img)
        print("latent mean/std", float(lat.mean()), float(lat.std()))
        print(caption(scenes[0], rng), "|", caption(scenes[1], rng, full=True))
    else:
        main()
