"""Broken checkpoints fail at load with one line naming the file, the key and the problem."""

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from internvlu import InternVLUPipeline
from internvlu.errors import CheckpointError

from conftest import hub_snapshot, shard_weights


@pytest.fixture
def ckpt(tmp_path, tiny_dir):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, target)
    return target


def load_error(path) -> str:
    with pytest.raises(CheckpointError) as info:
        InternVLUPipeline.from_pretrained(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def rewrite(path, change):
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def test_missing_folder(tmp_path):
    assert "not found" in load_error(tmp_path / "nowhere")


def test_missing_component_folder(ckpt):
    shutil.rmtree(ckpt / "vae")
    assert "`vae/`" in load_error(ckpt)


def test_missing_weights_file(ckpt):
    (ckpt / "vlm" / "model.safetensors").unlink()
    assert "no model.safetensors" in load_error(ckpt)


def test_missing_config_file(ckpt):
    (ckpt / "generation_decoder" / "config.json").unlink()
    assert "missing file" in load_error(ckpt)


@pytest.mark.parametrize("text", ["{not json", "[" * 100_000 + "]" * 100_000], ids=["malformed", "nested-too-deeply"])
def test_corrupt_json(ckpt, text):
    (ckpt / "vlm" / "config.json").write_text(text)
    assert "not valid JSON" in load_error(ckpt)


def test_truncated_safetensors(ckpt):
    path = ckpt / "generation_decoder" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = load_error(ckpt)
    assert "truncated or corrupt" in message and "model.safetensors" in message


def test_bytes_beyond_the_last_tensor(ckpt):
    path = ckpt / "vlm" / "model.safetensors"
    path.write_bytes(path.read_bytes() + b"junk")
    message = load_error(ckpt)
    assert "truncated or corrupt" in message and "model.safetensors" in message


def test_oversized_header(ckpt):
    path = ckpt / "vae" / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 1 << 60) + data[8:])
    assert "header" in load_error(ckpt)


def test_wrong_shape(ckpt):
    path = ckpt / "vlm" / "model.safetensors"
    rewrite(path, lambda t: t.update({"mlp1.1.bias": torch.zeros(65)}))
    message = load_error(ckpt)
    assert "`mlp1.1.bias`" in message and "[65]" in message and "[64]" in message


def test_unexpected_key(ckpt):
    rewrite(ckpt / "vlm" / "model.safetensors", lambda t: t.update({"extra.weight": torch.zeros(2)}))
    assert "unexpected tensor `extra.weight`" in load_error(ckpt)


def test_missing_key(ckpt):
    rewrite(ckpt / "generation_decoder" / "model.safetensors", lambda t: t.pop("decoder.proj_out.bias"))
    assert "missing tensor `decoder.proj_out.bias`" in load_error(ckpt)


def test_nan_weights(ckpt):
    def poison(tensors):
        tensors["decoder.img_in.weight"][0, 0] = float("nan")
    rewrite(ckpt / "generation_decoder" / "model.safetensors", poison)
    assert "NaN" in load_error(ckpt)


def test_finite_weights_are_checked_once_per_unchanged_file(ckpt, monkeypatch):
    """The NaN/infinity pass over every weight runs on the first load of a file and again only once it changed."""
    from internvlu.runtime import checkpoint

    passes = []
    isfinite = torch.isfinite
    monkeypatch.setattr(checkpoint.torch, "isfinite", lambda t: passes.append(t.numel()) or isfinite(t))
    InternVLUPipeline.from_pretrained(ckpt)
    first = len(passes)
    assert first > 0
    InternVLUPipeline.from_pretrained(ckpt)
    assert len(passes) == first  # nothing read again
    def poison(tensors):
        tensors["decoder.img_in.weight"][0, 0] = float("inf")
    rewrite(ckpt / "generation_decoder" / "model.safetensors", poison)  # a new file: new inode and mtime
    assert "NaN or infinite" in load_error(ckpt)


def test_integer_weights_refused(ckpt):
    rewrite(ckpt / "vlm" / "model.safetensors", lambda t: t.update({"mlp1.1.bias": torch.zeros(64, dtype=torch.int32)}))
    assert "dtype" in load_error(ckpt)


def test_absurd_config_refused_before_allocation(ckpt):
    path = ckpt / "vlm" / "config.json"
    config = json.loads(path.read_text())
    config["llm_config"]["hidden_size"] = 1 << 20
    config["llm_config"]["intermediate_size"] = 1 << 20
    path.write_text(json.dumps(config))
    assert "refusing to allocate" in load_error(ckpt)


def test_sharded_index_with_missing_shard(ckpt):
    shards = shard_weights(ckpt / "vlm")
    InternVLUPipeline.from_pretrained(ckpt)  # sharded loads
    (ckpt / "vlm" / shards[1]).unlink()
    assert "missing" in load_error(ckpt)


@pytest.mark.parametrize("shard", ["../vae/diffusion_pytorch_model.safetensors", "/etc/passwd", ""])
def test_index_naming_a_file_outside_its_folder_is_refused(ckpt, shard):
    shard_weights(ckpt / "vlm")
    index_path = ckpt / "vlm" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"][next(iter(index["weight_map"]))] = shard
    index_path.write_text(json.dumps(index))
    assert f"shard {shard!r} points outside" in load_error(ckpt)


def test_decoder_config_given_as_a_file_is_read_inside_the_component_only(ckpt):
    config_path = ckpt / "generation_decoder" / "config.json"
    config = json.loads(config_path.read_text())
    (ckpt / "generation_decoder" / "decoder.json").write_text(json.dumps(config["decoder_config"]))
    config["decoder_config"] = "decoder.json"
    config_path.write_text(json.dumps(config))
    InternVLUPipeline.from_pretrained(ckpt)
    config["decoder_config"] = "../vlm/config.json"
    config_path.write_text(json.dumps(config))
    assert "decoder_config path '../vlm/config.json' points outside" in load_error(ckpt)


def test_a_hub_snapshot_of_symbolic_links_into_the_blob_store_loads(tmp_path, ckpt):
    """huggingface_hub's cache: every file of a snapshot, shards included, links into `blobs/`, outside the
    component folder that lists it."""
    shard_weights(ckpt / "vlm")
    snapshot = hub_snapshot(ckpt, tmp_path / "hub" / "models--acme--tiny-u", "0" * 40)
    assert (snapshot / "vlm" / "model-00001-of-00002.safetensors").is_symlink()
    pipe = InternVLUPipeline.from_pretrained(snapshot)
    reference = InternVLUPipeline.from_pretrained(ckpt)
    assert all(torch.equal(a, b) for a, b in zip(pipe.vlm.state_dict().values(), reference.vlm.state_dict().values()))


def test_pickle_weights_refused(ckpt):
    (ckpt / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (ckpt / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    assert "safetensors only" in load_error(ckpt)


def test_bfloat16_load(tiny_dir):
    pipe = InternVLUPipeline.from_pretrained(tiny_dir, torch_dtype="bfloat16")
    assert pipe.dtype == torch.bfloat16 and pipe.generation_decoder.dtype == torch.bfloat16
    out = pipe("a red cube", generation_mode="image", height=32, width=32, num_inference_steps=2,
               generator=torch.Generator().manual_seed(0))
    assert out.images[0].size == (32, 32) and torch.isfinite(out.latents).all()


def edit_config(path, dotted: str, value):
    config = json.loads(path.read_text())
    *parents, leaf = dotted.split(".")
    target = config
    for key in parents:
        target = target[key]
    target[leaf] = value
    path.write_text(json.dumps(config))


# Values found by setting every config key of the tiny checkpoint to a string, null, -1, 0, 10^6, 0.5 and a
# list: each of these once raised a bare TypeError/KeyError/ZeroDivisionError at load or at the first call,
# or (num_res_blocks) built a VAE of 10^7 blocks until memory ran out.
HOSTILE_CONFIG_VALUES = [
    ("scheduler/scheduler_config.json", "num_train_timesteps", 0, "scheduler_config.json: unusable config"),
    ("scheduler/scheduler_config.json", "solver_order", 0, "scheduler_config.json: unusable config"),
    ("scheduler/scheduler_config.json", "timestep_spacing", "weird", "scheduler_config.json: unusable config"),
    ("scheduler/scheduler_config.json", "algorithm_type", "ddim", "scheduler_config.json: unusable config"),
    ("vae/config.json", "num_res_blocks", 10**7, "num_res_blocks"),
    ("vae/config.json", "dim_mult", 4, "dim_mult"),
    ("vae/config.json", "attn_scales", 3, "vae/config.json: unusable config"),
    ("vlm/config.json", "llm_config.rms_norm_eps", "x", "rms_norm_eps"),
    ("vlm/config.json", "llm_config.bos_token_id", "x", "bos_token_id"),
    ("vlm/config.json", "llm_config.max_position_embeddings", [1], "max_position_embeddings"),
    ("vlm/config.json", "llm_config.num_key_value_heads", 0, "num_key_value_heads"),
    ("vlm/config.json", "llm_config.hidden_act", "x", "vlm/config.json: unusable config (KeyError"),
    ("vlm/config.json", "llm_config.rope_scaling", "x", "rope_scaling"),
    ("vlm/config.json", "llm_config.architectures", 5, "architectures"),
    ("vlm/config.json", "vision_config.layer_norm_eps", None, "layer_norm_eps"),
    ("vlm/config.json", "vision_config", None, "`vision_config` is null"),
    ("vlm/config.json", "select_layer", None, "`select_layer` is null"),
    ("generation_decoder/config.json", "decoder_config.axes_dims_rope", 5, "generation_decoder/config.json: unusable config"),
    ("generation_decoder/config.json", "vlm_select_layer", None, "`vlm_select_layer` is null"),
    ("processor/processor_config.json", "image_processor_kwargs.rescale_factor", 0, "rescale_factor"),
    # Checked against the weights before building: a million small vision layers fit the parameter budget.
    ("vlm/config.json", "vision_config.num_hidden_layers", 10**4, "`vision_config.num_hidden_layers` is 10000, but"),
    ("vlm/config.json", "llm_config.num_hidden_layers", 3, "holds 2 layers `language_model.model.layers.N`"),
    ("generation_decoder/config.json", "decoder_config.num_layers", 10**4, "holds 2 layers `decoder.transformer_blocks.N`"),
    # A minimum above the maximum scaled every condition image up to it (the fuzz's 10^6 asked for 64M pixels).
    ("processor/processor_config.json", "image_gen_processor_kwargs.min_dynamic_patch", 10**6, "min_dynamic_patch 1000000 must"),
]


@pytest.mark.parametrize("file, key, value, says", HOSTILE_CONFIG_VALUES,
                         ids=[f"{file.split('/')[0]}-{key}" for file, key, _, _ in HOSTILE_CONFIG_VALUES])
def test_hostile_config_values_are_refused_at_load_naming_the_file(ckpt, file, key, value, says):
    edit_config(ckpt / file, key, value)
    message = load_error(ckpt)
    assert says in message
    assert str(ckpt) in message


def test_missing_tokenizer_config_is_named(ckpt):
    (ckpt / "processor" / "tokenizer_config.json").unlink()
    assert "missing file" in load_error(ckpt) and "tokenizer_config.json" in load_error(ckpt)


def test_corrupt_tokenizer_is_named(ckpt):
    (ckpt / "processor" / "tokenizer.json").write_text("{garbage")
    assert f"cannot load the tokenizer from {ckpt / 'processor'}" in load_error(ckpt)


def _edit_tokenizer_config(ckpt, **values):
    path = ckpt / "processor" / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.update(values)
    path.write_text(json.dumps(config))


def test_a_tokenizer_limit_that_is_not_a_number_is_named(ckpt):
    _edit_tokenizer_config(ckpt, model_max_length="x")
    assert "tokenizer_config.json: `model_max_length` = 'x' must be a number" in load_error(ckpt)


def test_a_token_id_past_the_language_models_embeddings_is_refused(ckpt):
    """The tokenizer of another model: here an end token its vocabulary lacks, appended past the model's 713
    embeddings. A prompt token past them was a bare IndexError in the middle of a call."""
    _edit_tokenizer_config(ckpt, eos_token="<|not_in_the_vocabulary|>")
    assert ("the tokenizer gives '<|not_in_the_vocabulary|>' the id 713, but the language model has 713 token "
            "embeddings") in load_error(ckpt)
