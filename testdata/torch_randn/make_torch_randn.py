#!/usr/bin/env python3
"""Reference draws of PyTorch's CPU `torch.randn` for Stipple's `rng::TorchRng` tests.

Writes torch_randn.safetensors next to this script (or to the path given as the first argument).

Each case is one `torch.Generator("cpu").manual_seed(seed)` followed by one or more successive
`torch.randn(shape, generator=g, dtype=torch.float32)` calls; draw i of case NAME of kernel K is
stored as tensor `K/NAME/i`. The file's metadata key `cases` holds, as JSON, a list of
{"kernel", "name", "seed" (decimal string: JSON numbers cannot hold every 64-bit seed), "shapes"}.

Kernels: PyTorch picks its 16-element Box-Muller implementation by CPU capability.
* `x86_avx2`: the capability PyTorch chooses on this x86 CPU (AVX2 or AVX512; both run
  normal_fill_16_AVX2). The script checks that forcing ATEN_CPU_CAPABILITY=avx2 gives the same bits.
* `portable`: ATEN_CPU_CAPABILITY=default, the portable normal_fill_16 using libm.
Each kernel runs in its own subprocess because the capability is read once per process.
"""

import json
import os
import platform
import subprocess
import sys
import tempfile

SEEDS = [0, 1, 42, 2**32 + 5, 0xFFFF_FFFF_FFFF_FFC5]
# SD latent at 512x512, a small latent, below the 16-element threshold, just above it, and a
# size that is not a multiple of 16 (the "redraw the last 16" tail).
PER_SEED_SHAPES = [[1, 4, 8, 8], [7], [17], [3, 5]]


def cases_for(kernel):
    cases = []
    if kernel == "x86_avx2":
        cases.append({"name": "seed0_sd_latent_512", "seed": 0, "shapes": [[1, 4, 64, 64]]})
        for seed in SEEDS:
            for shape in PER_SEED_SHAPES:
                dims = "x".join(map(str, shape))
                cases.append({"name": f"seed{seed}_{dims}", "seed": seed, "shapes": [shape]})
        # diffusers: initial latents (batch 2), then step noise from the same generator.
        cases.append({"name": "successive_latents_then_noise", "seed": 1234,
                      "shapes": [[2, 4, 8, 8], [1, 4, 8, 8]]})
        # The cached second Box-Muller value of the scalar path survives across calls, and the
        # float path in between neither uses nor clears it.
        cases.append({"name": "successive_cached_normal", "seed": 99,
                      "shapes": [[7], [7], [17], [5], [3, 5]]})
    else:
        cases.append({"name": "seed0_1x4x32x32", "seed": 0, "shapes": [[1, 4, 32, 32]]})
        for seed in [42, 0xFFFF_FFFF_FFFF_FFC5]:
            for shape in [[17], [3, 5], [7]]:
                dims = "x".join(map(str, shape))
                cases.append({"name": f"seed{seed}_{dims}", "seed": seed, "shapes": [shape]})
    for case in cases:
        case["kernel"] = kernel
    return cases


def worker(kernel, out_path):
    """Run in a subprocess whose ATEN_CPU_CAPABILITY the parent set."""
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for case in cases_for(kernel):
        g = torch.Generator("cpu").manual_seed(case["seed"])
        for i, shape in enumerate(case["shapes"]):
            x = torch.randn(shape, generator=g, dtype=torch.float32)
            tensors[f"{kernel}/{case['name']}/{i}"] = x.contiguous()
    save_file(tensors, out_path, metadata={"capability": torch.backends.cpu.get_cpu_capability()})


def run_worker(kernel, capability_env, out_path):
    env = dict(os.environ)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability_env is not None:
        env["ATEN_CPU_CAPABILITY"] = capability_env
    subprocess.run([sys.executable, __file__, "--worker", kernel, out_path], env=env, check=True)
    from safetensors import safe_open

    with safe_open(out_path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()["capability"]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    import torch
    from safetensors.torch import save_file

    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                              "torch_randn.safetensors")
    with tempfile.TemporaryDirectory() as tmp:
        native, native_cap = run_worker("x86_avx2", None, os.path.join(tmp, "native.safetensors"))
        forced, forced_cap = run_worker("x86_avx2", "avx2", os.path.join(tmp, "avx2.safetensors"))
        portable, portable_cap = run_worker("portable", "default", os.path.join(tmp, "default.safetensors"))

    if native_cap not in ("AVX2", "AVX512") or forced_cap != "AVX2" or portable_cap != "DEFAULT":
        sys.exit(f"unexpected CPU capabilities: native {native_cap}, forced {forced_cap}, "
                 f"default {portable_cap}; this script needs an x86-64 CPU with AVX2")
    for key, x in native.items():
        if not torch.equal(x.view(torch.int32), forced[key].view(torch.int32)):
            sys.exit(f"{key}: the {native_cap} and AVX2 kernels disagree; the x86_avx2 data would be ambiguous")

    cases = cases_for("x86_avx2") + cases_for("portable")
    for case in cases:
        case["seed"] = str(case["seed"])
    metadata = {
        "cases": json.dumps(cases),
        "torch": torch.__version__,
        "x86_avx2_capability": native_cap,
        "cpu": cpu_model(),
        "generator": "make_torch_randn.py",
    }
    save_file({**native, **portable}, out, metadata=metadata)
    print(f"wrote {out}: {len(native) + len(portable)} tensors; torch {torch.__version__}, "
          f"native capability {native_cap}, CPU {cpu_model()}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        main()
