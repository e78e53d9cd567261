"""TIES merging (experiments.ties): the trim / elect / disjoint-mean steps on numbers
worked by hand, the base kept outside ``--only``, and refusals of settings it cannot merge with."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from janusflow.errors import ConfigError
from janusflow.pipeline import JanusFlowPipeline
from janusflow.serve.tiny_model import build_tiny_model_folder
from experiments.ties import main, ties, ties_delta


@pytest.fixture(scope="module")
def base_and_finetunes(tmp_path_factory):
    root = tmp_path_factory.mktemp("ties")
    base = build_tiny_model_folder(root / "base", seed=0)
    state = load_file(base / "model.safetensors")
    finetunes = []
    for i in range(2):
        folder = root / f"ft{i}"
        shutil.copytree(base, folder)
        gen = torch.Generator().manual_seed(i)
        save_file({k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in state.items()},
                  folder / "model.safetensors")
        finetunes.append(folder)
    return base, finetunes


def test_ties_delta_trims_elects_and_averages_the_agreeing_changes():
    a = torch.tensor([1.0, -2.0, 0.1, 3.0])
    b = torch.tensor([1.0, 2.0, -0.5, -1.0])
    # keep all: signs of the sum (2, 0, -0.4, 2) -> (+, none, -, +); entry 2 only b agrees, entry 3 only a
    torch.testing.assert_close(ties_delta([a, b], 1.0), torch.tensor([1.0, 0.0, -0.5, 3.0]))
    # keep half: a -> (0, -2, 0, 3); b keeps 2 and both magnitudes tied at 1 -> (1, 2, 0, -1)
    torch.testing.assert_close(ties_delta([a, b], 0.5), torch.tensor([1.0, 0.0, 0.0, 3.0]))
    assert torch.equal(ties_delta([a], 1.0), a)
    torch.testing.assert_close(ties_delta([a.reshape(2, 2), b.reshape(2, 2)], 1.0),
                               torch.tensor([[1.0, 0.0], [-0.5, 3.0]]))


def test_ties_merges_the_listed_modules_and_keeps_the_base_elsewhere(base_and_finetunes, tmp_path):
    base, (ft0, ft1) = base_and_finetunes
    sb, s0, s1 = (load_file(p / "model.safetensors") for p in (base, ft0, ft1))
    one = load_file(ties(base, [ft0], tmp_path / "one", keep=1.0, only=["language_model"]) / "model.safetensors")
    moved = [k for k in one if k.startswith("language_model.")]
    assert moved and len(moved) < len(one)
    for k in one:
        torch.testing.assert_close(one[k], (s0 if k in moved else sb)[k].float())

    out = ties(base, [ft0, ft1], tmp_path / "two", keep=0.3, weights=[1.0, 2.0], scale=0.5)
    merged = load_file(out / "model.safetensors")
    for k in merged:
        want = sb[k].float() + 0.5 * ties_delta([s0[k] - sb[k], 2 * (s1[k] - sb[k])], 0.3)
        torch.testing.assert_close(merged[k], want)
    k = moved[0]
    changed = (merged[k] != sb[k].float()).float().mean().item()
    assert 0.3 <= changed <= 0.6  # two changes, each trimmed to 30%, overlapping in part
    assert JanusFlowPipeline.from_pretrained(out).vae is not None


def test_ties_refuses_settings_it_cannot_merge_with(base_and_finetunes, tmp_path, capsys):
    base, (ft0, ft1) = base_and_finetunes
    for kwargs, match in (({"keep": 0.0}, "keep"), ({"keep": 1.5}, "keep"), ({"scale": 0.0}, "scale"),
                          ({"weights": [1.0]}, "one positive weight"), ({"weights": [1.0, -1.0]}, "one positive weight"),
                          ({"only": ["llm"]}, "modules to merge")):
        with pytest.raises(ConfigError, match=match):
            ties(base, [ft0, ft1], tmp_path / "x", **kwargs)
    with pytest.raises(ConfigError, match="at least one"):
        ties(base, [], tmp_path / "x")
    with pytest.raises(ConfigError, match="overwrite"):
        ties(base, [ft0, ft1], ft1)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "c"), str(base), str(ft0), "--keep", "2"])
    assert exit_info.value.code == 2 and "keep" in capsys.readouterr().err
    main([str(tmp_path / "c"), str(base), str(ft0), str(ft1), "--weights", "1,1.3", "--only", "language_model"])
    assert (tmp_path / "c" / "model.safetensors").is_file()
