"""One implementation's outputs on a list of pipeline calls, for `parity_sweep.py`.

    python benchmarks/parity_driver.py --model DIR --calls calls.json --out DIR/ours              # ours
    OFFICIAL_PY benchmarks/parity_driver.py --official CHECKOUT --model DIR --calls calls.json --out DIR/official

Each call of `calls.json` is a pipeline call's keyword arguments plus a `name`; `image` is a PNG path and
`seed` seeds the noise generator of an image call. Writes `OUT.safetensors` (each call's images as uint8
[n, H, W, 3]) and `OUT.json` (per call: the new token ids, or the error a call raised as `Type: message`), so a
call that one side refuses and the other runs shows up as a difference, not as a crashed sweep. One thread and
deterministic algorithms on both sides: the goldens were recorded so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline_driver import declare_torchvision_schemas, load


def token_ids(generate_output) -> list[list[int]] | None:
    if generate_output is None:
        return None
    sequences = getattr(generate_output, "sequences", generate_output)
    return [[int(t) for t in row] for row in sequences]


def run_call(pipe, call: dict):
    import numpy as np
    import torch
    from PIL import Image

    kwargs = {k: v for k, v in call.items() if k not in ("name", "seed")}
    if kwargs.get("image") is not None:
        kwargs["image"] = Image.open(kwargs["image"]).convert("RGB")
    if kwargs["generation_mode"] != "text":
        kwargs["generator"] = torch.Generator().manual_seed(call.get("seed", 42))
    with torch.no_grad():
        out = pipe(**kwargs)
    images = None
    if out.images:
        images = torch.stack([torch.from_numpy(np.array(im.convert("RGB"), dtype=np.uint8)) for im in out.images])
    return images, token_ids(out.generate_output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--calls", required=True, type=Path)
    parser.add_argument("--out", required=True, help="path stem: OUT.safetensors and OUT.json are written")
    parser.add_argument("--official", help="checkout of the official implementation (default: run this project's)")
    args = parser.parse_args()
    if args.official:
        sys.path.insert(0, str(Path(args.official).resolve()))
        declare_torchvision_schemas()
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    from internvlu import InternVLUPipeline

    loading = argparse.Namespace(model=args.model, official=args.official, dtype="float32", device="cpu", cpu_linear=None)
    pipe = load(loading, InternVLUPipeline, frozenset())
    images, report = {}, {}
    for call in json.loads(args.calls.read_text()):
        try:
            call_images, tokens = run_call(pipe, call)
        except Exception as exc:  # recorded: the other side may refuse the same call, or may not
            report[call["name"]] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            continue
        if call_images is not None:
            images[call["name"]] = call_images.contiguous()
        report[call["name"]] = {"tokens": tokens, "images": 0 if call_images is None else len(call_images)}
    save_file(images, f"{args.out}.safetensors")
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
