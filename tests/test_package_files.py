"""What the wheel ships besides code: the embedded model folder once, no duplicated data file, and
nothing of the recipe's intermediate artifacts (the parts a run builds stay in its run folder)."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "janusflow"


def shipped_data_files() -> list[Path]:
    """The files under janusflow/ that pyproject's package-data patterns put in the wheel."""
    table = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]", 1)[1]
    patterns = re.findall(r'"([^"]+)"', re.search(r'"\*" = \[(.*?)\]', table).group(1))  # (tomllib: Python 3.11+)
    assert "*.safetensors" in patterns
    return sorted(p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and any(fnmatch(p.name, pattern) for pattern in patterns))


def test_no_data_file_is_shipped_twice():
    by_content = defaultdict(list)
    for path in shipped_data_files():
        by_content[hashlib.sha256(path.read_bytes()).hexdigest()].append(str(path.relative_to(ROOT)))
    assert [paths for paths in by_content.values() if len(paths) > 1] == []


def test_the_default_model_folder_holds_the_model_and_its_records_only():
    model = PACKAGE / "default_model"
    if not (model / "config.json").is_file():
        return  # a checkout without the embedded model: nothing ships
    assert not (model / "parts").exists()  # the recipe's parts live in its run folder
    top = {p.name for p in model.iterdir()}
    needed = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "processor_config.json", "preprocessor_config.json", "chat_template.jinja", "image_generation_config.json",
              "vae"}
    assert needed <= top
    assert all(name in needed or (name.startswith("eval_shapes") or name == "recipe.json") for name in top), top
    size = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
    assert size <= 25e6  # the bound on the shipped model
