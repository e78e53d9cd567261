"""The README's main job (`janusflow demo`) runs and says what it did."""

import pytest

import janusflow.demo as demo_module
from janusflow.cli import main
from janusflow.pipeline import default_model_dir


def test_demo_runs_and_reports(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("janusflow.pipeline.default_model_dir", lambda: None)  # the random fallback path
    assert main(["demo", "--out", str(tmp_path), "--steps", "1", "--n-samples", "1"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM weights" in out and "generate: 1 image(s)" in out and "ask: 'describe the image.'" in out
    assert (tmp_path / "generated_0.png").is_file() and (tmp_path / "question_image.png").is_file()
    assert demo_module.DEMO_PROMPT in out


def test_demo_rejects_bad_arguments(capsys):
    assert main(["demo", "--steps", "0"]) == 1
    assert "at least 1" in capsys.readouterr().err


def test_demo_on_the_embedded_model_samples_with_its_defaults(tmp_path, capsys):
    if default_model_dir() is None:
        pytest.skip("no default model installed")
    assert main(["demo", "--out", str(tmp_path), "--steps", "2", "--n-samples", "1"]) == 0
    out = capsys.readouterr().out
    assert "each the best of up to 4 by the model's own answers" in out and "drawn in all" in out
