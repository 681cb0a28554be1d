"""A trained nano VAE that a training run starts from (`python -m internvlu.train --vae-from FOLDER`).

The VAE stage is the longest part of the curriculum for the least model (it needs about 10^5 images before
its reconstructions pass the gate), and its result does not depend on anything trained after it. So a VAE
trained once (`benchmarks/bench_vae_stage.py --run-dir RUN`) can be packed here and reused: the run scores
it against the gate first and trains the VAE stage only if it falls short.

A packed VAE is its `config.json` (with the latent statistics measured on it) and its weights in
bfloat16, the dtype the model ships in. On one frame only the last temporal tap of a causal 3-D
convolution meets data, and training leaves the other taps at their zero start (they only ever see the
zero padding, so their gradient is zero), so a weight whose leading taps are all zero is stored as that
last tap, which is a third of the file; the file's metadata lists those names and `read` puts the zero
taps back. `read` takes a run's or a model's `vae/` folder in the official layout as well.

    python -m internvlu.train.pretrained_vae RUN/model/vae internvlu/train/nano-vae
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from internvlu.errors import CheckpointError
from internvlu.runtime.checkpoint import open_safetensors
from internvlu.runtime.config import read_json

WEIGHTS = "diffusion_pytorch_model.safetensors"
LAST_TAP_ONLY = "last_tap_only"  # metadata key: JSON list of the weights stored as their last temporal tap
STORED_DTYPE = torch.bfloat16
NOT_ARCHITECTURE = ("latents_mean", "latents_std", "_diffusers_version")


def vae_folder(path: Path) -> Path:
    """The folder that holds the VAE: `path` itself, or its `vae/` (a model) or `model/vae/` (a run)."""
    for candidate in (path, path / "vae", path / "model" / "vae"):
        if (candidate / "config.json").is_file() and (candidate / WEIGHTS).is_file():
            return candidate
    raise CheckpointError(f"{path}: no VAE there (config.json and {WEIGHTS} in it, its vae/ or its "
                          "model/vae/); give a packed VAE, a model folder or a training run folder")


def read(path: Path, expected_config: dict | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """The VAE config and float32 weights in `path` (see `vae_folder`); with `expected_config`, refused in
    one line when its architecture is another."""
    folder = vae_folder(path)
    config = read_json(folder / "config.json")
    if expected_config is not None:
        differing = [k for k in sorted(set(config) | set(expected_config))
                     if k not in NOT_ARCHITECTURE and config.get(k) != expected_config.get(k)]
        if differing:
            key = differing[0]
            raise CheckpointError(f"{folder}: its VAE has {key} {config.get(key)!r} where this run's has "
                                  f"{expected_config.get(key)!r}; give a VAE trained for internvlu-nano")
    weights = folder / WEIGHTS
    handle = open_safetensors(weights)
    try:
        last_tap_names = json.loads((handle.metadata() or {}).get(LAST_TAP_ONLY, "[]"))
    except json.JSONDecodeError:
        last_tap_names = None
    if not isinstance(last_tap_names, list):
        raise CheckpointError(f"{weights}: its {LAST_TAP_ONLY} metadata is not a JSON list of names")
    tensors = {}
    for name in handle.keys():
        tensor = handle.get_tensor(name).float()
        if name in last_tap_names:
            if tensor.dim() != 5 or tensor.shape[2] != 1:
                raise CheckpointError(f"{weights}: {name} is listed as one temporal tap but has shape "
                                      f"{list(tensor.shape)}; re-pack the VAE")
            tensor = unpack_tap(tensor)
        tensors[name] = tensor
    return config, tensors


def unpack_tap(last_tap: torch.Tensor) -> torch.Tensor:
    """[out, in, 1, h, w] with a temporal kernel of 3 again: zero taps in front of the stored one (every
    causal convolution of this VAE that has temporal taps has three)."""
    return torch.cat([torch.zeros_like(last_tap).expand(-1, -1, 2, -1, -1), last_tap], dim=2)


def write(config: dict, tensors: dict[str, torch.Tensor], out: Path) -> None:
    """Pack a trained VAE into the new folder `out`, atomically."""
    if out.exists():
        raise FileExistsError(f"{out} exists; give a new folder")
    stored, planar = {}, []
    for name, tensor in tensors.items():
        if tensor.dim() == 5 and tensor.shape[2] == 3 and not tensor[:, :, :-1].any():
            tensor, planar = tensor[:, :, -1:], [*planar, name]
        stored[name] = tensor.to(STORED_DTYPE).contiguous()
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(stored, str(staging / WEIGHTS), metadata={"format": "pt", LAST_TAP_ONLY: json.dumps(planar)})
    staging.rename(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m internvlu.train.pretrained_vae", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a trained VAE: a run folder, a model folder or its vae/")
    parser.add_argument("out", type=Path, help="the new folder for the packed VAE")
    args = parser.parse_args(argv)
    try:
        config, tensors = read(args.source)
        write(config, tensors, args.out)
    except (CheckpointError, FileExistsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"packed {vae_folder(args.source)} into {args.out} ({(args.out / WEIGHTS).stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
