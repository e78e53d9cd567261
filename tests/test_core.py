"""Core model: parity with the official implementation, the key map, save/load, bad checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from janusflow import convert
from janusflow.checkpoint import build_meta, export_official, load_model
from janusflow.config import JanusFlowConfig
from janusflow.errors import CheckpointError, ConfigError
from janusflow.modeling import JanusFlowModel
from janusflow.parity import TOLERANCE, run_parity

FIXTURES = Path(__file__).parent / "fixtures"
PARITY = FIXTURES / "parity-small"


def test_parity_small_matches_official_outputs():
    results = run_parity(PARITY)
    names = {r.name.split("@")[0] for r in results}
    # every recorded output of the three cases is recomputed
    assert {"und.logits", "und.inputs_embeds", "vel.v", "vel.v_cfg", "vel.z_next", "gen.z_final",
            "gen.z_traj", "gen.tokens", "gen.attention_mask"} <= names
    bad = [(r.name, r.max_abs_diff) for r in results if not r.max_abs_diff <= TOLERANCE]
    assert not bad, bad


def test_parity_detects_a_wrong_weight(tmp_path):
    folder = tmp_path / "fixture"
    shutil.copytree(PARITY, folder)
    state = load_file(folder / "model.safetensors")
    key = "vision_gen_dec_model.mid_block.res_blocks.0.channelwise_norm.weight"
    state[key] = torch.zeros_like(state[key])  # a fresh official GRN: must move v
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    worst = {r.name: r.max_abs_diff for r in run_parity(folder)}
    assert worst["vel.v"] > 1e-2 and worst["und.logits"] <= TOLERANCE


def _manifest() -> dict[str, tuple[int, ...]]:
    rows = (FIXTURES / "janusflow-1.3b-state-dict.tsv").read_text().strip().splitlines()[1:]
    return {k: tuple(int(x) for x in s.split(",")) for k, s, _ in (r.split("\t") for r in rows)}


def test_release_config_reads_to_the_preset():
    data = json.loads((FIXTURES / "janusflow-1.3b-config.json").read_text())
    assert convert.config_from_official(data) == JanusFlowConfig.from_name("janusflow-1.3b")


def test_whole_release_manifest_maps_both_ways():
    config = JanusFlowConfig.from_name("janusflow-1.3b")
    model = build_meta(config)  # no weights allocated
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    rules = convert.key_map(list(ours))
    official = convert.official_shapes(rules, ours)
    assert official == _manifest()  # every key and shape of the release, nothing more
    fake_official = {k: torch.empty(s, device="meta") for k, s in _manifest().items()}
    back = convert.official_to_ours(fake_official, ours)
    assert {k: tuple(v.shape) for k, v in back.items()} == ours
    again = convert.ours_to_official(back)
    assert {k: tuple(v.shape) for k, v in again.items()} == _manifest()
    n = sum(v.numel() for v in model.state_dict().values())
    assert n == sum(torch.Size(s).numel() for s in _manifest().values())


def test_siglip_qkv_split_order_round_trips():
    data = load_file(PARITY / "model.safetensors")
    model = load_model(PARITY)
    ours = model.state_dict()
    qkv = data["vision_und_enc_model.vision_tower.blocks.1.attn.qkv.weight"]
    w = qkv.shape[0] // 3
    torch.testing.assert_close(ours["und_encoder.siglip.encoder.layers.1.self_attn.k_proj.weight"], qkv[w:2 * w])
    exported = convert.ours_to_official(ours)
    assert set(exported) == set(data)
    for k in data:
        torch.testing.assert_close(exported[k], data[k], rtol=0, atol=0)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = JanusFlowModel(JanusFlowConfig.from_name("tiny")).eval()
    model.save_pretrained(tmp_path / "ours")
    loaded = load_model(tmp_path / "ours")
    assert loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    z = torch.randn(2, 4, 8, 8)
    ids = torch.randint(10, 300, (2, 5))
    t = torch.tensor([100.0, 700.0])
    with torch.no_grad():
        v1 = model.forward_generation(model.embed_prompt(ids), z, t).velocity
        v2 = loaded.forward_generation(loaded.embed_prompt(ids), z, t).velocity
    torch.testing.assert_close(v1, v2, rtol=0, atol=0)
    # the official layout round-trips too
    export_official(model, tmp_path / "official")
    assert "language_config" in json.loads((tmp_path / "official" / "config.json").read_text())
    again = load_model(tmp_path / "official")
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_bf16_save(tmp_path):
    model = JanusFlowModel(JanusFlowConfig.from_name("tiny"))
    model.save_pretrained(tmp_path, dtype=torch.bfloat16)
    assert all(v.dtype == torch.bfloat16 for v in load_file(tmp_path / "model.safetensors").values())
    assert load_model(tmp_path).dtype == torch.float32  # fp32 on CPU by default


@pytest.fixture
def official_copy(tmp_path):
    folder = tmp_path / "official"
    shutil.copytree(PARITY, folder)
    (folder / "cases.safetensors").unlink()
    return folder


def _edit_weights(folder: Path, edit) -> None:
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def test_missing_key_is_named(official_copy):
    _edit_weights(official_copy, lambda s: s.pop("vision_gen_enc_model.in_conv.bias"))
    with pytest.raises(CheckpointError, match=r"missing: vision_gen_enc_model\.in_conv\.bias"):
        load_model(official_copy)


def test_unexpected_key_is_named(official_copy):
    _edit_weights(official_copy, lambda s: s.__setitem__("extra.weight", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"unexpected: extra\.weight"):
        load_model(official_copy)


def test_misshaped_key_is_named(official_copy):
    _edit_weights(official_copy, lambda s: s.__setitem__("beg_of_und_embed", torch.zeros(1, 65)))
    with pytest.raises(CheckpointError, match=r"wrong shape: beg_of_und_embed: checkpoint \[1, 65\], model \[1, 64\]"):
        load_model(official_copy)


def test_wrong_dtype_is_refused(official_copy):
    _edit_weights(official_copy, lambda s: s.__setitem__("beg_of_und_embed", torch.zeros(1, 64, dtype=torch.int64)))
    with pytest.raises(CheckpointError, match="non-float"):
        load_model(official_copy)


def test_pickle_is_never_loaded(official_copy):
    (official_copy / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, official_copy / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle files are not loaded"):
        load_model(official_copy)


def test_pickle_posing_as_safetensors(official_copy):
    torch.save({"x": torch.zeros(1)}, official_copy / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(official_copy)


def test_sharded_index(official_copy):
    state = load_file(official_copy / "model.safetensors")
    keys = sorted(state)
    half = len(keys) // 2
    shards = {"a.safetensors": keys[:half], "b.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, official_copy / name, metadata={"format": "pt"})
    (official_copy / "model.safetensors").unlink()
    weight_map = {k: name for name, ks in shards.items() for k in ks}
    (official_copy / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model = load_model(official_copy)
    torch.testing.assert_close(model.boi_embedding, state["beg_of_und_embed"])
    (official_copy / "b.safetensors").unlink()
    with pytest.raises(CheckpointError, match="b.safetensors"):
        load_model(official_copy)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["language_config"].pop("hidden_size"), "hidden_size"),
    (lambda c: c["language_config"].__setitem__("rope_scaling", {"type": "linear"}), "rope_scaling"),
    (lambda c: c["vision_und_enc_config"].__setitem__("params", {"model_name": "nope"}), "unknown SigLIP"),
    (lambda c: c["vision_gen_dec_config"]["params"].__setitem__("block_out_channels", [48]), "channels"),
])
def test_bad_official_config(official_copy, edit, message):
    data = json.loads((official_copy / "config.json").read_text())
    edit(data)
    (official_copy / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message):
        load_model(official_copy)


def test_bad_own_config(tmp_path):
    JanusFlowModel(JanusFlowConfig.from_name("tiny")).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["language"]["hidden_size"] = "big"
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"language\.hidden_size: expected an integer"):
        load_model(tmp_path)
    data["language"]["hidden_size"] = 33  # not divisible by the heads
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="divisible"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_model(tmp_path)
    data = json.loads(json.dumps(JanusFlowConfig.from_name("tiny").to_dict()))
    data["gen_vision"]["flux_capacitor"] = 1
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="flux_capacitor"):
        load_model(tmp_path)


def test_no_size_literals_in_tiny_model():
    """The tiny preset builds and runs: nothing in the modules assumes the release's sizes."""
    model = JanusFlowModel(JanusFlowConfig.from_name("tiny")).eval()
    cfg = model.config
    ids = torch.randint(10, 300, (2, 4 + cfg.num_und_image_tokens + 2))
    seq = torch.zeros_like(ids, dtype=torch.bool)
    seq[:, 2:3 + cfg.num_und_image_tokens] = True
    pixels = torch.rand(2, 1, 3, cfg.und_vision.image_size, cfg.und_vision.image_size) * 2 - 1
    with torch.no_grad():
        logits = model.forward_understanding(ids, torch.ones_like(ids), pixels, seq).logits
    assert logits.shape == (2, ids.shape[1], cfg.language.vocab_size)
    z = torch.randn(3, cfg.gen_vision.latent_channels, cfg.gen_vision.latent_size, cfg.gen_vision.latent_size)
    with torch.no_grad():
        prompt = torch.randint(10, 300, (3, 5))
        v = model.forward_generation(model.embed_prompt(prompt), z, torch.full((3,), 500.0)).velocity
    assert v.shape == z.shape and torch.isfinite(v).all()
