"""The transformers classes on CUDA (skipped without a GPU): Auto classes with device_map and dtype,
generate() equal to the CPU in fp32, the bf16 defaults, sharded save on the GPU."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

import janusflow  # noqa: F401  (registers the Auto classes)
from janusflow.pipeline import DEFAULT_MODEL_DIR
from janusflow.understanding import JanusFlowChat

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def questions(processor):
    pictures = []
    for colour, box in (("red", (10, 10, 40, 40)), ("blue", (20, 5, 60, 30)), ("green", (5, 30, 30, 60))):
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse(box, fill=colour)
        pictures.append(image)
    conversations = [[{"role": "user", "content": [{"type": "image", "image": im},
                                                   {"type": "text", "text": q}]}]
                     for im, q in zip(pictures, ["What color is the shape?", "How many shapes are there?",
                                                 "describe the picture"])]
    return processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True,
                                         return_dict=True, return_tensors="pt")


def test_generate_on_cuda_equals_the_cpu_in_fp32_and_runs_in_bf16(tmp_path):
    processor = AutoProcessor.from_pretrained(DEFAULT_MODEL_DIR)
    inputs = questions(processor)
    T = inputs["input_ids"].shape[1]
    cpu = AutoModel.from_pretrained(DEFAULT_MODEL_DIR)
    gpu = AutoModelForImageTextToText.from_pretrained(DEFAULT_MODEL_DIR, device_map="cuda", dtype="float32")
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    expected = cpu.generate(**inputs, max_new_tokens=16, do_sample=False)
    got = gpu.generate(**inputs.to("cuda"), max_new_tokens=16, do_sample=False).cpu()
    assert torch.equal(got, expected)

    bf16 = AutoModelForImageTextToText.from_pretrained(DEFAULT_MODEL_DIR, device_map="auto")  # the CUDA default
    assert bf16.device.type == "cuda" and bf16.dtype == torch.bfloat16
    answers = bf16.generate(**inputs.to("cuda"), max_new_tokens=16, do_sample=False)
    texts = [processor.decode(row[T:]).strip() for row in answers]
    assert all(texts)
    chat = JanusFlowChat(bf16, processor)
    assert chat.ask_batch([([], "hello")], max_new_tokens=4)[0] is not None
    beams = bf16.generate(**inputs.to("cuda"), max_new_tokens=8, num_beams=3, do_sample=False)
    assert beams.shape[0] == 3
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(bf16.generate(**inputs.to("cuda"), max_new_tokens=8, do_sample=True, top_p=0.9))
    assert torch.equal(runs[0], runs[1])

    bf16.save_pretrained(tmp_path, max_shard_size="4MB")
    again = AutoModel.from_pretrained(tmp_path, device_map={"": 0})
    assert again.dtype == torch.bfloat16 and again.device.type == "cuda"
    assert all(torch.equal(a, b) for a, b in zip(bf16.state_dict().values(), again.state_dict().values()))
