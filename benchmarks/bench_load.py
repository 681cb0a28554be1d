"""Model load time and peak memory in fresh processes: the first load of a checkpoint (every weight checked for
NaN and infinity) and a later one (the check remembered for the unchanged files), and the peak memory of a later
process that loads and answers a question in 16 tokens (the image head and VAE loaded but never touched); one
JSON line.

    python -m internvlu.synthetic /tmp/small --size small && python benchmarks/bench_load.py /tmp/small --runs 3

Each load runs in its own interpreter with its own cache folder (`INTERNVLU_HOME`), emptied before the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

LOAD = """
import resource, sys, time
import torch
from internvlu import InternVLUPipeline
start = time.perf_counter()
pipe = InternVLUPipeline.from_pretrained(sys.argv[1], torch_dtype=sys.argv[2])
seconds = time.perf_counter() - start
if sys.argv[3] == "answer":
    pipe("what is in the picture?", generation_mode="text", max_new_tokens=16, min_new_tokens=16)
print(seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def load_once(model: str, dtype: str, home: str, then: str = "nothing") -> tuple[float, int]:
    out = subprocess.run([sys.executable, "-c", LOAD, model, dtype, then], check=True, capture_output=True, text=True,
                         env={**os.environ, "INTERNVLU_HOME": home}).stdout.split()
    return float(out[0]), int(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    first, later, answer = [], [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as home:
            first.append(load_once(args.model, args.dtype, home))
            later.append(load_once(args.model, args.dtype, home))
            answer.append(load_once(args.model, args.dtype, home, "answer"))
    print(json.dumps({
        "benchmark": "load", "model": args.model, "dtype": args.dtype, "runs": args.runs,
        "first_load_s": round(statistics.median(s for s, _ in first), 3),
        "first_peak_rss_mib": round(statistics.median(m for _, m in first) / 2**20),
        "later_load_s": round(statistics.median(s for s, _ in later), 3),
        "later_peak_rss_mib": round(statistics.median(m for _, m in later) / 2**20),
        "text_answer_peak_rss_mib": round(statistics.median(m for _, m in answer) / 2**20),
    }, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
