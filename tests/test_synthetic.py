import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import GOLDEN, assert_answer_stops_where_generation_stops
from internvlu.errors import UsageError
from internvlu.runtime.checkpoint import WeightSource
from internvlu.runtime.config import DecoderConfig, ProcessorConfig, VAEConfig, VLMConfig
from internvlu.runtime.generation_decoder import InternVLUGenerationDecoder
from internvlu.runtime.pipeline import InternVLUPipeline, _check_consistency
from internvlu.synthetic import checkpoint as synthetic
from internvlu.synthetic.checkpoint import build_checkpoint, count_parameters, main, write_configs

WEIGHT_FILES = {
    "vlm": "model.safetensors",
    "generation_decoder": "model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
}
CONFIG_FILES = (
    "model_index.json",
    "vlm/config.json",
    "generation_decoder/config.json",
    "vae/config.json",
    "scheduler/scheduler_config.json",
    "processor/processor_config.json",
)
# spec §1.4: the published generation decoder.
FULL_DECODER_PARAMETERS = 1_808_034_880
FULL_DECODER_TENSORS = 654


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    folder = tmp_path_factory.mktemp("tiny") / "checkpoint"
    return folder, build_checkpoint(folder, "tiny", seed=0)


@pytest.fixture(scope="module")
def synthetic_tiny_pipe(tiny: tuple[Path, dict[str, int]]) -> InternVLUPipeline:
    return InternVLUPipeline.from_pretrained(tiny[0])


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _weight_bytes(folder: Path) -> dict[str, bytes]:
    return {component: (folder / component / name).read_bytes() for component, name in WEIGHT_FILES.items()}


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_tiny_pipeline_generates_an_image_and_text(synthetic_tiny_pipe: InternVLUPipeline) -> None:
    out = synthetic_tiny_pipe("a red circle", generation_mode="image", height=64, width=64, num_inference_steps=2,
                    generator=torch.Generator().manual_seed(0))
    assert out.images[0].size == (64, 64)
    assert out.latents.shape == (1, 16, 8, 8)
    assert torch.isfinite(out.latents).all()
    assert out.latents.std() > 0.1
    assert np.asarray(out.images[0]).std() > 1, "a constant image means degenerate weights"

    answer = synthetic_tiny_pipe("what is in the picture?", generation_mode="text", max_new_tokens=4)
    assert answer.generate_output.shape[0] == 1
    assert_answer_stops_where_generation_stops(synthetic_tiny_pipe, answer, 4)


def test_tiny_has_the_golden_configs_and_layout(tiny: tuple[Path, dict[str, int]]) -> None:
    folder, _ = tiny
    for name in CONFIG_FILES:
        # `_diffusers_version` records the writer's diffusers release, not configuration the runtime reads.
        ours, golden = (_read_json(root / name) for root in (folder, GOLDEN / "tiny_pipeline"))
        for config in (ours, golden):
            config.pop("_diffusers_version", None)
        if name == "vlm/config.json":
            # The runtime builds the LM from llm_config alone, so the tie is stated there as well.
            assert ours["llm_config"].pop("tie_word_embeddings") is golden["tie_word_embeddings"] is False
        assert ours == golden, name
    golden_files = {p.relative_to(GOLDEN / "tiny_pipeline") for p in (GOLDEN / "tiny_pipeline").rglob("*") if p.is_file()}
    assert {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()} == golden_files


def test_counts_match_the_loaded_modules(tiny: tuple[Path, dict[str, int]], synthetic_tiny_pipe: InternVLUPipeline) -> None:
    _, counts = tiny
    vlm = synthetic_tiny_pipe.vlm
    assert counts == {
        "vision": _numel(vlm.vision_model),
        "language_model": _numel(vlm.language_model),
        "projector": _numel(vlm.mlp1) + _numel(vlm.special_token_embedding),
        "generation_decoder": _numel(synthetic_tiny_pipe.generation_decoder),
        "vae": _numel(synthetic_tiny_pipe.vae.model),
        "total": _numel(vlm) + _numel(synthetic_tiny_pipe.generation_decoder) + _numel(synthetic_tiny_pipe.vae.model),
    }
    assert count_parameters("tiny") == counts


def test_init_rules_reproduce_the_golden_weights() -> None:
    init = _read_json(GOLDEN / "tiny_pipeline_init.json")
    golden = {c: load_file(GOLDEN / "tiny_pipeline" / c / name) for c, name in WEIGHT_FILES.items()}
    generator = torch.Generator().manual_seed(init["seed"])
    for full_name, shape, _ in init["params"]:
        component, name = full_name.split(".", 1)
        drawn = synthetic.draw_parameter(name, torch.Size(shape), generator)
        assert torch.equal(drawn, golden[component][name]), full_name


def test_same_seed_gives_identical_bytes_and_another_seed_differs(
    tiny: tuple[Path, dict[str, int]], tmp_path: Path
) -> None:
    folder, _ = tiny
    again, other = tmp_path / "again", tmp_path / "other"
    again.mkdir()  # an existing empty folder is accepted
    build_checkpoint(again, "tiny", seed=0)
    build_checkpoint(other, "tiny", seed=1)
    reference = _weight_bytes(folder)
    assert _weight_bytes(again) == reference
    assert all(data != reference[c] for c, data in _weight_bytes(other).items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "other"], "no staging folder is left behind"


def test_refuses_to_overwrite_a_non_empty_folder(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        build_checkpoint(target, "tiny")
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]
    with pytest.raises(UsageError, match="size"):
        build_checkpoint(tmp_path / "new", "huge")


def test_sharded_components_load(tiny: tuple[Path, dict[str, int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic, "SHARD_BYTES", 400_000)
    folder = tmp_path / "sharded"
    build_checkpoint(folder, "tiny", seed=0)
    unsharded = tiny[0]
    for component, name in WEIGHT_FILES.items():
        stem = name.removesuffix(".safetensors")
        index = _read_json(folder / component / f"{stem}.safetensors.index.json")
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) > 1 and not (folder / component / name).exists()
        merged = {k: v for shard in shards for k, v in load_file(folder / component / shard).items()}
        expected = load_file(unsharded / component / name)
        assert merged.keys() == expected.keys()
        assert all(torch.equal(merged[k], expected[k]) for k in expected)
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in expected.values())
    InternVLUPipeline.from_pretrained(folder)


def test_small_configs_load_and_agree(tmp_path: Path) -> None:
    write_configs(tmp_path, "small")
    vlm = VLMConfig.from_file(tmp_path / "vlm" / "config.json")
    decoder = DecoderConfig.from_file(tmp_path / "generation_decoder" / "config.json")
    vae = VAEConfig.from_file(tmp_path / "vae" / "config.json")
    processor = ProcessorConfig.from_file(tmp_path / "processor" / "processor_config.json")
    _check_consistency(vlm, decoder, vae, processor, tmp_path)
    assert (vlm.vision.hidden_size, vlm.vision.num_hidden_layers, vlm.image_size) == (1024, 2, 448)
    assert (vlm.llm_hidden_size, vlm.llm_num_layers, vlm.llm["tie_word_embeddings"]) == (2048, 2, True)
    tokenizer_size = len(_read_json(tmp_path / "processor" / "tokenizer.json")["model"]["vocab"]) + 13
    assert vlm.llm["vocab_size"] % 64 == 0 and 0 <= vlm.llm["vocab_size"] - tokenizer_size < 64
    assert (decoder.mmdit.inner_dim, decoder.mmdit.num_layers, decoder.decoder_projector_type) == (1536, 2, "identity")
    assert processor.image_seq_length == vlm.num_image_token == 256
    assert vae.raw["base_dim"] == 96


def test_full_generation_decoder_has_the_published_size(tmp_path: Path) -> None:
    write_configs(tmp_path, "full")
    with torch.device("meta"):
        decoder = InternVLUGenerationDecoder(DecoderConfig.from_file(tmp_path / "generation_decoder" / "config.json"))
    assert _numel(decoder) == FULL_DECODER_PARAMETERS
    assert len(decoder.state_dict()) == FULL_DECODER_TENSORS


def test_full_counts() -> None:
    counts = count_parameters("full")
    assert counts["generation_decoder"] == FULL_DECODER_PARAMETERS
    assert math.isclose(counts["vision"], 0.3e9, rel_tol=0.05)
    assert math.isclose(counts["language_model"], 1.72e9, rel_tol=0.02), "tied embeddings counted once"
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")


@pytest.mark.slow
def test_small_builds_with_a_tied_head_and_answers(tmp_path: Path) -> None:
    folder = tmp_path / "small"
    assert build_checkpoint(folder, "small", seed=0) == count_parameters("small")
    names = set(WeightSource(folder / "vlm", "model"))
    assert "language_model.model.embed_tokens.weight" in names and "language_model.lm_head.weight" not in names
    pipe = InternVLUPipeline.from_pretrained(folder)
    lm = pipe.vlm.language_model
    assert lm.lm_head.weight is lm.model.embed_tokens.weight
    answer = pipe("what is in the picture?", generation_mode="text", max_new_tokens=2)
    assert 1 <= answer.generate_output.shape[1] <= 2


def test_cli_builds_and_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "cli"), "--size", "tiny", "--seed", "3", "--dtype", "bfloat16"]) == 0
    printed = capsys.readouterr().out
    assert "generation decoder" in printed and "total" in printed
    assert all(t.dtype == torch.bfloat16 for t in load_file(tmp_path / "cli" / "vlm" / "model.safetensors").values())
    assert main(["--size", "full", "--counts-only"]) == 0
    assert f"{FULL_DECODER_PARAMETERS:,}" in capsys.readouterr().out
    assert main([str(tmp_path / "cli"), "--size", "tiny"]) == 2
    assert "not empty" in capsys.readouterr().err
