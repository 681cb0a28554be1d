"""Synthetic InternVL-U checkpoints for tests, benchmarks and the embedded `tiny` model: random weights and
an offline-trained tokenizer in the official on-disk layout. Not needed to run a real checkpoint.

- `checkpoint`: configs, weights and the `python -m internvlu.synthetic` command;
- `tokenizer`: the small Qwen2-style byte-level BPE tokenizer the checkpoints ship.
"""

from internvlu.synthetic.checkpoint import SizeSpec, build_checkpoint, count_parameters, write_configs

__all__ = ["SizeSpec", "build_checkpoint", "count_parameters", "write_configs"]
