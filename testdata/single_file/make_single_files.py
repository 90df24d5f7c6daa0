"""Write the tiny FLUX / SD3 reference pipelines of testdata/pipelines/models as all-in-one
single files in the original layouts (the inverse of diffusers' single-file conversion), and
check every file by converting it back with diffusers' own conversion functions.

    /work/venv/bin/python testdata/single_file/make_single_files.py

Layouts (as in the files people download):
  model.diffusion_model.*                 transformer: BFL's FLUX layout (double_blocks ...) or
                                          Stability's MMDiT layout (joint_blocks ...)
  first_stage_model.* or vae.*            VAE in the LDM layout (mid.attn_1 as 1x1 convolutions)
  text_encoders.clip_l.transformer.*      CLIP-L in transformers' layout
  text_encoders.clip_g.transformer.*      CLIP-G in transformers' layout (SD3)
  text_encoders.t5xxl.transformer.*       T5 encoder in transformers' layout

Configs go in the safetensors metadata under Stipple's keys (stipple.model_index,
stipple.<component>_config, stipple.<tokenizer>_files) where the tiny models differ from what
Stipple can infer: the tiny text encoders and VAEs are not the published ones, so their configs
are always stored. Left out on purpose, to exercise Stipple's defaults:
  flux_dev_tiny:    model_index and scheduler (FLUX.1-dev's published ones match), tokenizers
                    (the test puts the folders next to the file)
  sd35_medium_tiny: model_index, scheduler and the transformer config (every dimension is
                    inferred from the tensor shapes: RMS query/key norms give the head width),
                    tokenizers
flux_schnell_tiny and sd3_tiny carry everything, tokenizers included. (The tiny FLUX
transformer's rotary axes and sd3_tiny's head width, 8 without query/key norms, cannot be
inferred from shapes, so those configs are required.)

diffusers' FLUX converter hard-codes FLUX.1's width (inner_dim = 3072); the check runs its
source with that one constant set to the tiny model's width.
"""

import inspect
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from diffusers.loaders import single_file_utils as sfu

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "pipelines" / "models"
OUT = Path(__file__).resolve().parent


def chunks(t, n):
    return list(torch.chunk(t, n, dim=0))


def swap_halves(t):
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def linear(out, original, sd, diffusers):
    for part in ("weight", "bias"):
        out[f"{original}.{part}"] = sd[f"{diffusers}.{part}"]


def fused(out, original, sd, names):
    for part in ("weight", "bias"):
        out[f"{original}.{part}"] = torch.cat([sd[f"{n}.{part}"] for n in names], dim=0)


def flux_to_original(sd):
    """Inverse of convert_flux_transformer_checkpoint_to_diffusers."""
    o = {}
    for orig, diff in [
        ("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
        ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
        ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
        ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
        ("txt_in", "context_embedder"),
        ("img_in", "x_embedder"),
        ("final_layer.linear", "proj_out"),
    ]:
        linear(o, orig, sd, diff)
    if "time_text_embed.guidance_embedder.linear_1.weight" in sd:
        linear(o, "guidance_in.in_layer", sd, "time_text_embed.guidance_embedder.linear_1")
        linear(o, "guidance_in.out_layer", sd, "time_text_embed.guidance_embedder.linear_2")
    for part in ("weight", "bias"):
        o[f"final_layer.adaLN_modulation.1.{part}"] = swap_halves(sd[f"norm_out.linear.{part}"])
    doubles = {int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks.")}
    for i in sorted(doubles):
        m, s = f"transformer_blocks.{i}", f"double_blocks.{i}"
        linear(o, f"{s}.img_mod.lin", sd, f"{m}.norm1.linear")
        linear(o, f"{s}.txt_mod.lin", sd, f"{m}.norm1_context.linear")
        fused(o, f"{s}.img_attn.qkv", sd, [f"{m}.attn.to_{x}" for x in "qkv"])
        fused(o, f"{s}.txt_attn.qkv", sd, [f"{m}.attn.add_{x}_proj" for x in "qkv"])
        for orig, diff in [
            ("img_mlp.0", "ff.net.0.proj"), ("img_mlp.2", "ff.net.2"),
            ("txt_mlp.0", "ff_context.net.0.proj"), ("txt_mlp.2", "ff_context.net.2"),
            ("img_attn.proj", "attn.to_out.0"), ("txt_attn.proj", "attn.to_add_out"),
        ]:
            linear(o, f"{s}.{orig}", sd, f"{m}.{diff}")
        o[f"{s}.img_attn.norm.query_norm.scale"] = sd[f"{m}.attn.norm_q.weight"]
        o[f"{s}.img_attn.norm.key_norm.scale"] = sd[f"{m}.attn.norm_k.weight"]
        o[f"{s}.txt_attn.norm.query_norm.scale"] = sd[f"{m}.attn.norm_added_q.weight"]
        o[f"{s}.txt_attn.norm.key_norm.scale"] = sd[f"{m}.attn.norm_added_k.weight"]
    singles = {int(k.split(".")[1]) for k in sd if k.startswith("single_transformer_blocks.")}
    for i in sorted(singles):
        m, s = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        linear(o, f"{s}.modulation.lin", sd, f"{m}.norm.linear")
        fused(o, f"{s}.linear1", sd, [f"{m}.attn.to_q", f"{m}.attn.to_k", f"{m}.attn.to_v", f"{m}.proj_mlp"])
        linear(o, f"{s}.linear2", sd, f"{m}.proj_out")
        o[f"{s}.norm.query_norm.scale"] = sd[f"{m}.attn.norm_q.weight"]
        o[f"{s}.norm.key_norm.scale"] = sd[f"{m}.attn.norm_k.weight"]
    return o


def sd3_to_original(sd):
    """Inverse of convert_sd3_transformer_checkpoint_to_diffusers."""
    o = {
        "pos_embed": sd["pos_embed.pos_embed"],
        "x_embedder.proj.weight": sd["pos_embed.proj.weight"],
        "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
    }
    for orig, diff in [
        ("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
        ("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
        ("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
        ("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"),
        ("context_embedder", "context_embedder"),
        ("final_layer.linear", "proj_out"),
    ]:
        linear(o, orig, sd, diff)
    for part in ("weight", "bias"):
        o[f"final_layer.adaLN_modulation.1.{part}"] = swap_halves(sd[f"norm_out.linear.{part}"])
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks."))
    for i in range(layers):
        m, x, c = f"transformer_blocks.{i}", f"joint_blocks.{i}.x_block", f"joint_blocks.{i}.context_block"
        last = i == layers - 1
        fused(o, f"{x}.attn.qkv", sd, [f"{m}.attn.to_{n}" for n in "qkv"])
        fused(o, f"{c}.attn.qkv", sd, [f"{m}.attn.add_{n}_proj" for n in "qkv"])
        if f"{m}.attn.norm_q.weight" in sd:
            o[f"{x}.attn.ln_q.weight"] = sd[f"{m}.attn.norm_q.weight"]
            o[f"{x}.attn.ln_k.weight"] = sd[f"{m}.attn.norm_k.weight"]
            o[f"{c}.attn.ln_q.weight"] = sd[f"{m}.attn.norm_added_q.weight"]
            o[f"{c}.attn.ln_k.weight"] = sd[f"{m}.attn.norm_added_k.weight"]
        linear(o, f"{x}.attn.proj", sd, f"{m}.attn.to_out.0")
        if f"{m}.attn2.to_q.weight" in sd:
            fused(o, f"{x}.attn2.qkv", sd, [f"{m}.attn2.to_{n}" for n in "qkv"])
            if f"{m}.attn2.norm_q.weight" in sd:
                o[f"{x}.attn2.ln_q.weight"] = sd[f"{m}.attn2.norm_q.weight"]
                o[f"{x}.attn2.ln_k.weight"] = sd[f"{m}.attn2.norm_k.weight"]
            linear(o, f"{x}.attn2.proj", sd, f"{m}.attn2.to_out.0")
        linear(o, f"{x}.adaLN_modulation.1", sd, f"{m}.norm1.linear")
        linear(o, f"{x}.mlp.fc1", sd, f"{m}.ff.net.0.proj")
        linear(o, f"{x}.mlp.fc2", sd, f"{m}.ff.net.2")
        if last:
            # The last context block only modulates (context_pre_only): stored shift, scale.
            for part in ("weight", "bias"):
                o[f"{c}.adaLN_modulation.1.{part}"] = swap_halves(sd[f"{m}.norm1_context.linear.{part}"])
        else:
            linear(o, f"{c}.attn.proj", sd, f"{m}.attn.to_add_out")
            linear(o, f"{c}.adaLN_modulation.1", sd, f"{m}.norm1_context.linear")
            linear(o, f"{c}.mlp.fc1", sd, f"{m}.ff_context.net.0.proj")
            linear(o, f"{c}.mlp.fc2", sd, f"{m}.ff_context.net.2")
    return o


def vae_to_ldm(sd, config):
    """Inverse of convert_ldm_vae_checkpoint (diffusers AutoencoderKL -> LDM names)."""
    blocks = len(config["block_out_channels"])
    o = {}
    for k, v in sd.items():
        n = k
        n = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", n)
        n = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.", r"encoder.down.\1.downsample.conv.", n)
        n = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                   lambda g: f"decoder.up.{blocks - 1 - int(g[1])}.block.{g[2]}.", n)
        n = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.",
                   lambda g: f"decoder.up.{blocks - 1 - int(g[1])}.upsample.conv.", n)
        n = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda g: f".mid.block_{int(g[1]) + 1}.", n)
        n = n.replace(".conv_norm_out.", ".norm_out.").replace(".conv_shortcut.", ".nin_shortcut.")
        n = n.replace(".mid_block.attentions.0.group_norm.", ".mid.attn_1.norm.")
        for d, l in [("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]:
            if f".mid_block.attentions.0.{d}." in n:
                n = n.replace(f".mid_block.attentions.0.{d}.", f".mid.attn_1.{l}.")
                if v.dim() == 2:  # LDM stores the attention projections as 1x1 convolutions
                    v = v[:, :, None, None]
        o[n] = v
    return o


def flux_converter_for(inner_dim):
    """diffusers' FLUX converter with its hard-coded FLUX.1 width set to `inner_dim`."""
    src = inspect.getsource(sfu.convert_flux_transformer_checkpoint_to_diffusers)
    assert "inner_dim = 3072" in src
    src = src.replace("inner_dim = 3072", f"inner_dim = {inner_dim}")
    scope = dict(vars(sfu))
    exec(src, scope)
    return scope["convert_flux_transformer_checkpoint_to_diffusers"]


def assert_same(name, original, converted):
    assert set(original) == set(converted), (name, set(original) ^ set(converted))
    for k in original:
        assert torch.equal(original[k], converted[k]), (name, k)
    print(f"  {name}: {len(original)} tensors round-trip exactly")


def read_json(path):
    return json.loads(path.read_text())


def tokenizer_files(folder):
    return json.dumps({p.name: p.read_text() for p in sorted(folder.iterdir()) if p.is_file()})


def write(name, vae_prefix, store_configs, store_tokenizers, store_index_scheduler):
    src = MODELS / name
    index = read_json(src / "model_index.json")
    flux = index["_class_name"] == "FluxPipeline"
    transformer = load_file(src / "transformer" / "diffusion_pytorch_model.safetensors")
    vae = load_file(src / "vae" / "diffusion_pytorch_model.safetensors")
    vae_config = read_json(src / "vae" / "config.json")
    encoders = [("text_encoder", "clip_l"), ("text_encoder_2", "t5xxl")] if flux else [
        ("text_encoder", "clip_l"), ("text_encoder_2", "clip_g"), ("text_encoder_3", "t5xxl")]

    t_orig = flux_to_original(transformer) if flux else sd3_to_original(transformer)
    out = {f"model.diffusion_model.{k}": v for k, v in t_orig.items()}
    out.update({f"{vae_prefix}{k}": v for k, v in vae_to_ldm(vae, vae_config).items()})
    for component, key in encoders:
        weights = load_file(src / component / "model.safetensors")
        out.update({f"text_encoders.{key}.transformer.{k}": v for k, v in weights.items()})
    out = {k: v.contiguous() for k, v in out.items()}

    # The inverse, checked with diffusers' own conversion functions.
    print(name)
    if flux:
        inner = transformer["x_embedder.weight"].shape[0]
        back = flux_converter_for(inner)({k: v for k, v in out.items() if k.startswith("model.diffusion_model.")})
    else:
        back = sfu.convert_sd3_transformer_checkpoint_to_diffusers(
            {k: v for k, v in out.items() if k.startswith("model.diffusion_model.")})
    assert_same("transformer", transformer, back)
    assert_same("vae", vae, sfu.convert_ldm_vae_checkpoint(out, vae_config))
    for component, key in encoders:
        weights = load_file(src / component / "model.safetensors")
        if key == "t5xxl":
            back = sfu.convert_sd3_t5_checkpoint_to_diffusers(out)
        else:
            back = sfu.convert_ldm_clip_checkpoint(out, f"text_encoders.{key}.transformer.")
            back = {k: v for k, v in back.items() if not k.startswith("text_encoders.")}
        assert_same(component, weights, back)

    metadata = {}
    if store_index_scheduler:
        metadata["stipple.model_index"] = json.dumps(index)
        metadata["stipple.scheduler_config"] = (src / "scheduler" / "scheduler_config.json").read_text()
    for component in store_configs:
        metadata[f"stipple.{component}_config"] = (src / component / "config.json").read_text()
    if store_tokenizers:
        for tok in [k for k in index if k.startswith("tokenizer") and index[k][0]]:
            metadata[f"stipple.{tok}_files"] = tokenizer_files(src / tok)
    path = OUT / f"{name}.safetensors"
    save_file(out, path, metadata=metadata)
    print(f"  wrote {path.relative_to(ROOT.parent)} ({path.stat().st_size} bytes, metadata: {sorted(metadata)})")


if __name__ == "__main__":
    torch.manual_seed(0)
    write("flux_schnell_tiny", "vae.", ["transformer", "vae", "text_encoder", "text_encoder_2"], True, True)
    write("flux_dev_tiny", "first_stage_model.", ["transformer", "vae", "text_encoder", "text_encoder_2"], False, False)
    write("sd3_tiny", "first_stage_model.",
          ["transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"], True, True)
    write("sd35_medium_tiny", "first_stage_model.", ["vae", "text_encoder", "text_encoder_2", "text_encoder_3"],
          False, False)
