"""LoRA runs export a peft adapter beside the merged model: ``peft.PeftModel.from_pretrained`` on the model
the run started from gives the merged export's outputs."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import PeftModel
from PIL import Image

from inference_helpers import tiny_model
from janusflow import JanusFlowModel
from janusflow.train import Trainer, lora
from janusflow.train.config import load_config
from janusflow.train.task import JanusFlowTask, build_model
from janusflow.train.toydata import toy_overrides, write_toy_data


def understanding_inputs(processor):
    image = Image.new("RGB", (40, 30), (200, 20, 20))
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "What colour is the circle?"}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)


def test_a_lora_run_exports_an_adapter_peft_loads(tmp_path):
    toy = write_toy_data(tmp_path / "toy", count=8)
    config = load_config(None, toy_overrides(toy, tmp_path / "run") + [
        "lora.enabled=true", "lora.r=4", "lora.target_modules=[q_proj,v_proj,down_proj]", "stage.steps=3",
        "stage.trainable=[language_model]", "trainer.ema_decay=0"])
    task = JanusFlowTask(config)
    Trainer(task, config.trainer_config()).fit()
    export = tmp_path / "run" / "export"
    adapter = export / lora.ADAPTER_SUBFOLDER
    assert {p.name for p in adapter.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"

    base, processor = build_model(config)  # the model the run started from
    start = {k: v.clone() for k, v in base.state_dict().items()}
    with_adapter = PeftModel.from_pretrained(base, adapter)
    assert not any("lora" in name for name, _ in with_adapter.named_modules() if ".und_encoder." in name)
    merged = JanusFlowModel.from_pretrained(export)
    inputs = understanding_inputs(processor)
    with torch.no_grad():
        got = with_adapter(**inputs).logits
        expected = merged(**inputs).logits
        with with_adapter.disable_adapter():
            before = with_adapter(**inputs).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert (before - expected).abs().max() > 1e-3  # the adapter is what changed the answers
    unloaded = with_adapter.merge_and_unload()
    assert type(unloaded) is JanusFlowModel and set(unloaded.state_dict()) == set(start)
    for key, value in merged.state_dict().items():
        torch.testing.assert_close(unloaded.state_dict()[key], value, rtol=0, atol=1e-6)


def test_save_and_load_adapter_in_place_trained():
    base = tiny_model(seed=4)
    trained = copy.deepcopy(base)
    lora.apply_lora(trained, r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "o_proj"])
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids = torch.tensor([[0, 11, 22, 33, 44, 55]])
    with torch.no_grad():
        expected = trained.eval()(input_ids=ids).logits
    from tempfile import TemporaryDirectory

    with TemporaryDirectory() as folder:
        lora.save_adapter(trained, folder, base_model_name_or_path="start-folder")
        config = json.loads(open(f"{folder}/adapter_config.json").read())
        assert config["base_model_name_or_path"] == "start-folder" and config["r"] == 2
        loaded = lora.load_adapter(copy.deepcopy(base), folder)
        with torch.no_grad():
            torch.testing.assert_close(loaded(input_ids=ids).logits, expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="no LoRA"):
        lora.save_adapter(base, "unused")


def test_auto_model_on_an_adapter_folder_loads_its_base_then_the_adapter(tmp_path):
    """transformers' own peft integration: an adapter folder naming a local base model."""
    from transformers import AutoModel

    from janusflow.pipeline import DEFAULT_MODEL_DIR

    trained = JanusFlowModel.from_pretrained(DEFAULT_MODEL_DIR)
    lora.apply_lora(trained, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    lora.save_adapter(trained, tmp_path, base_model_name_or_path=str(DEFAULT_MODEL_DIR))
    loaded = AutoModel.from_pretrained(tmp_path)
    ids = torch.tensor([[0, 10, 20, 30, 40]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, trained.eval()(input_ids=ids).logits,
                                   rtol=0, atol=1e-5)
