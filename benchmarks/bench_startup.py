"""Cold start of the command line: wall time of fresh processes, median of N runs; one JSON line.

    python benchmarks/bench_startup.py --runs 5

Run it with the Python of the environment to measure: the README's install (no extras) and the test extra
(which adds bitsandbytes, imported by diffusers and transformers whenever it is installed) start differently.
Measures `internvlu --help`, `internvlu gen` on the embedded nano at 64 px (20 steps, the default), and, to
show where the time goes, bare `python -c "import ..."` of torch, transformers' Qwen3 model, diffusers' VAE
and scheduler, and the runtime pipeline. Every run is a new interpreter, as a shell script would start it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMPORTS = {
    "import_torch_s": "import torch",
    "import_transformers_qwen3_s": "from transformers.models.qwen3 import modeling_qwen3",
    "import_diffusers_vae_s": "from diffusers.models.autoencoders import autoencoder_kl_qwenimage",
    "import_diffusers_scheduler_s": "from diffusers.schedulers import scheduling_dpmsolver_multistep",
    "import_pipeline_s": "import internvlu.runtime.pipeline",
}


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_wall(command: list[str], runs: int) -> float:
    return round(statistics.median(wall(command) for _ in range(runs)), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "internvlu"]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "a.png"
        result = {
            "benchmark": "startup", "runs": args.runs,
            "bitsandbytes_installed": importlib.util.find_spec("bitsandbytes") is not None,
            "help_s": median_wall([*cli, "--help"], args.runs),
            "gen_nano_64px_s": median_wall([*cli, "gen", "a red circle above a blue square", "--seed", "1", "-o", str(out),
                                            "--overwrite", "-q"], args.runs),
        }
    for key, statement in IMPORTS.items():
        result[key] = median_wall([sys.executable, "-c", statement], args.runs)
    print(json.dumps(result, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
