"""The README's Hugging Face snippets (transformers and peft) run as written, on the embedded model."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def snippets(subsection: str) -> list[str]:
    """The python blocks of ``### {subsection}...`` inside ``## Hugging Face``."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Hugging Face\n", 1)[1].split("\n## ", 1)[0]
    part = section.split(f"\n### {subsection}", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", part, flags=re.S)


def test_transformers_snippet(capsys):
    (code,) = snippets("transformers")
    namespace: dict = {}
    exec(compile(code, "README transformers snippet", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].strip() == "red"  # what the snippet's comment says
    assert len(printed) >= 2 and printed[1].strip()  # the streamed, sampled answer


def test_peft_snippet(tmp_path):
    from janusflow.pipeline import DEFAULT_MODEL_DIR
    from janusflow.modeling import JanusFlowModel
    from janusflow.train import lora

    trained = JanusFlowModel.from_pretrained(DEFAULT_MODEL_DIR)  # a LoRA "run" on the embedded model
    lora.apply_lora(trained, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    lora.save_adapter(trained, tmp_path / "adapter")
    expected = lora.merged_copy(trained).state_dict()

    (code,) = snippets("peft")
    namespace = {"model_dir": DEFAULT_MODEL_DIR, "adapter_dir": tmp_path / "adapter"}
    exec(compile(code, "README peft snippet", "exec"), namespace)
    merged = namespace["merged"].state_dict()
    assert merged.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(merged[key], value, rtol=0, atol=1e-6)
    base = JanusFlowModel.from_pretrained(DEFAULT_MODEL_DIR).state_dict()
    q_proj = "language_model.model.layers.0.self_attn.q_proj.weight"
    assert (merged[q_proj] - base[q_proj]).abs().max() > 1e-3  # the adapter was applied
