"""The judge registry (``janusflow.judges``): a folder's image_generation_config.json names a judge that
a plugin registered; "shapes" comes from janusflow.shapes without the core importing it; a third-party
judge comes in through an installed distribution's entry point."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from inference_helpers import make_model_folder
from janusflow import judges
from janusflow.errors import ConfigError
from janusflow.image_generation_config import ImageGenerationConfig
from janusflow.pipeline import JanusFlowPipeline

ROOT = Path(__file__).resolve().parent.parent


class LastCandidate:
    """Prefers the last of each image's candidates."""

    def __init__(self, model, processor):
        self.model, self.calls = model, 0

    def validate(self, prompt):
        pass

    def __call__(self, prompt, images):
        self.calls += 1
        return list(range(len(images)))


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(judges._REGISTRY, "last_candidate", LastCandidate)
    return "last_candidate"


def python(code: str, *paths: Path) -> subprocess.CompletedProcess:
    env_path = ":".join(str(p) for p in (ROOT, *paths))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, timeout=300)


def test_a_folder_names_a_registered_judge_and_the_pipeline_uses_it(tmp_path, registered):
    folder = make_model_folder(tmp_path / "m")
    ImageGenerationConfig(candidates=3, judge=registered).save(folder)
    pipe = JanusFlowPipeline.from_pretrained(folder, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.default_judge(), LastCandidate) and pipe.default_judge().model is pipe.model
    kwargs = dict(num_inference_steps=2, generator=4, output_type="latent")
    best = pipe("a red circle", num_images_per_prompt=2, **kwargs).images  # the folder's default: best of 3
    plain = pipe("a red circle", num_images_per_prompt=6, candidates=1, **kwargs).images
    torch.testing.assert_close(best, plain[[2, 5]], rtol=0, atol=0)


def test_unknown_and_malformed_names(registered):
    with pytest.raises(ConfigError, match=r"judge must be one of \[.*'last_candidate'.*\] or null, got 'clip'"):
        ImageGenerationConfig(candidates=2, judge="clip")
    for bad in ("../x", "Shapes", "os.path", ""):
        assert judges.find_judge(bad) is None
    with pytest.raises(ValueError, match="lower case"):
        judges.register_judge("Bad Name", LastCandidate)
    with pytest.raises(KeyError, match="no judge named 'clip'"):
        judges.make_judge("clip", None, None)


def test_shapes_comes_from_its_plugin_package_without_the_core_importing_it():
    out = python("""
        import sys
        import janusflow.pipeline, janusflow.understanding
        from janusflow.image_generation_config import ImageGenerationConfig
        assert "janusflow.shapes" not in sys.modules, "the core imported the shapes world"
        ImageGenerationConfig(candidates=4, judge="shapes")  # looked up: an entry point, or the plugin package
        assert "janusflow.shapes" in sys.modules
        from janusflow import judges
        assert judges.find_judge("shapes").__module__.startswith("janusflow.shapes")
        print("ok")
    """)
    assert out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_a_third_party_judge_through_an_entry_point(tmp_path):
    """A distribution installed on the path declares ``[janusflow.judges] brightest = ...``; a folder can
    name it with nothing imported by hand (importlib.metadata reads the entry point)."""
    (tmp_path / "bright_judge.py").write_text(textwrap.dedent("""
        class Brightest:
            def __init__(self, model, processor):
                self.model = model
            def validate(self, prompt):
                pass
            def __call__(self, prompt, images):
                return [sum(im.convert("L").getdata()) for im in images]

        def factory(model, processor):
            return Brightest(model, processor)
    """))
    info = tmp_path / "bright_judge-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bright-judge\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[janusflow.judges]\nbrightest = bright_judge:factory\n")
    out = python("""
        from janusflow import judges
        from janusflow.image_generation_config import ImageGenerationConfig
        assert "brightest" in judges.judge_names()
        config = ImageGenerationConfig(candidates=2, judge="brightest")
        judge = config.make_judge("the model", None)
        assert type(judge).__name__ == "Brightest" and judge.model == "the model"
        print("ok")
    """, tmp_path)
    assert out.stdout.strip().endswith("ok"), out.stderr[-2000:]
