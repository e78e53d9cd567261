"""The model soup (janusflow.shapes.recipe.soup): the weighted mean, and refusals of folders that
cannot be averaged (another architecture, other tensors, another VAE)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from janusflow.errors import CheckpointError, ConfigError
from janusflow.pipeline import JanusFlowPipeline
from janusflow.serve.tiny_model import build_tiny_model_folder
from janusflow.shapes.recipe.soup import main, soup


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("soup")
    a = build_tiny_model_folder(root / "a", seed=0)
    b = root / "b"
    shutil.copytree(a, b)
    state = load_file(b / "model.safetensors")
    save_file({k: v + torch.randn_like(v) for k, v in state.items()}, b / "model.safetensors")
    return a, b


def test_soup_is_the_weighted_mean_and_loads(two_models, tmp_path):
    a, b = two_models
    out = soup([a, b], tmp_path / "s", weights=[1, 3])
    sa, sb, s = (load_file(p / "model.safetensors") for p in (a, b, out))
    assert s.keys() == sa.keys()
    for k in s:
        torch.testing.assert_close(s[k], (sa[k].float() + 3 * sb[k].float()) / 4)
    assert json.loads((out / "config.json").read_text()) == json.loads((a / "config.json").read_text())
    assert JanusFlowPipeline.from_pretrained(out).vae is not None
    equal = load_file(soup([a, b], tmp_path / "e") / "model.safetensors")
    k = next(iter(equal))
    torch.testing.assert_close(equal[k], (sa[k].float() + sb[k].float()) / 2)


def test_soup_of_some_modules_keeps_the_first_model_elsewhere(two_models, tmp_path):
    a, b = two_models
    out = soup([a, b], tmp_path / "llm", weights=[1, 1], only=["language_model"])
    sa, sb, s = (load_file(p / "model.safetensors") for p in (a, b, out))
    moved = [k for k in s if k.startswith("language_model.")]
    assert moved and len(moved) < len(s)
    for k in s:
        want = (sa[k].float() + sb[k].float()) / 2 if k in moved else sa[k].float()
        torch.testing.assert_close(s[k], want)
    with pytest.raises(ConfigError, match="modules to average"):
        soup([a, b], tmp_path / "bad", only=["language"])
    with pytest.raises(ConfigError, match="modules to average"):
        soup([a, b], tmp_path / "none", only=[])


def _variant(src, dst, change):
    shutil.copytree(src, dst)
    change(dst)
    return dst


def test_soup_refuses_folders_it_cannot_average(two_models, tmp_path):
    a, b = two_models

    def other_config(d):
        config = json.loads((d / "config.json").read_text())
        config["language"]["rms_norm_eps"] = 1e-3
        (d / "config.json").write_text(json.dumps(config))

    def missing_tensor(d):
        state = load_file(d / "model.safetensors")
        state.pop(sorted(state)[0])
        save_file(state, d / "model.safetensors")

    def other_shape(d):
        state = load_file(d / "model.safetensors")
        k = sorted(state)[0]
        state[k] = torch.zeros(3, 3)
        save_file(state, d / "model.safetensors")

    def other_vae(d):
        path = d / "vae" / "diffusion_pytorch_model.safetensors"
        state = load_file(path)
        k = sorted(state)[0]
        state[k] = state[k] + 1
        save_file(state, path)

    for name, change, match in (("config", other_config, "config.json differs"),
                                ("missing", missing_tensor, "tensors differ"),
                                ("shape", other_shape, "has shape"),
                                ("vae", other_vae, "VAE differs")):
        bad = _variant(b, tmp_path / name, change)
        with pytest.raises(CheckpointError, match=match):
            soup([a, bad], tmp_path / f"out-{name}")
        assert not (tmp_path / f"out-{name}").exists()
    with pytest.raises(ConfigError, match="at least two"):
        soup([a], tmp_path / "one")
    with pytest.raises(ConfigError, match="positive weight"):
        soup([a, b], tmp_path / "w", weights=[1, 0])
    with pytest.raises(ConfigError, match="overwrite"):
        soup([a, b], b)
    with pytest.raises(CheckpointError, match="no config.json"):
        soup([a, tmp_path / "nowhere"], tmp_path / "n")


def test_soup_command_reports_errors_in_one_line(two_models, tmp_path, capsys):
    a, b = two_models
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "s"), str(a), str(b), "--weights", "1,-1"])
    assert exit_info.value.code == 2 and "positive weight" in capsys.readouterr().err
    main([str(tmp_path / "s"), str(a), str(b), "--weights", "2,1"])
    assert (tmp_path / "s" / "model.safetensors").is_file()
    main([str(tmp_path / "o"), str(a), str(b), "--only", "language_model,gen_decoder"])
    so, sa = load_file(tmp_path / "o" / "model.safetensors"), load_file(a / "model.safetensors")
    assert all(torch.equal(so[k], sa[k].float()) for k in so if k.startswith("und_encoder."))
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "x"), str(a), str(b), "--only", "llm"])
    assert exit_info.value.code == 2 and "modules to average" in capsys.readouterr().err
