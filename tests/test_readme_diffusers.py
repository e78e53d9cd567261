"""README's "### diffusers" snippets run as written, in order, on the embedded model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from janusflow.pipeline import default_model_dir

README = Path(__file__).resolve().parent.parent / "README.md"


def diffusers_snippets() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^### diffusers\n(.*?)(?=^#{2,3} )", text, flags=re.S | re.M)
    assert section is not None, "README has no '### diffusers' section"
    return re.findall(r"```python\n(.*?)```", section.group(1), flags=re.S)


def test_the_section_has_the_three_snippets():
    snippets = diffusers_snippets()
    assert len(snippets) == 3
    assert "FlowMatchHeunDiscreteScheduler" in snippets[0] and "save_pretrained" in snippets[0]
    assert "JanusFlowImg2ImgPipeline" in snippets[1] and "JanusFlowInpaintPipeline" in snippets[2]


@pytest.mark.skipif(default_model_dir() is None, reason="no embedded model")
def test_the_snippets_run_on_the_embedded_model(tmp_path, monkeypatch):
    from diffusers import FlowMatchHeunDiscreteScheduler

    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for snippet in diffusers_snippets():
        exec(compile(snippet, str(README), "exec"), namespace)
    for name in ("heun.png", "img2img.png", "inpaint.png"):
        with Image.open(tmp_path / name) as image:
            assert image.size == (64, 64)
    assert (tmp_path / "janusflow-pipeline" / "model_index.json").is_file()
    assert isinstance(namespace["pipe"].scheduler, FlowMatchHeunDiscreteScheduler)  # reloaded with the swap
