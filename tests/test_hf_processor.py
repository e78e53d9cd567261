"""JanusFlowProcessor as a transformers processor: AutoProcessor on every folder the project writes,
the image processor against today's preprocessing, the Jinja chat template against apply_sft_template,
apply_chat_template and __call__ against build_understanding_batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from inference_helpers import make_model_folder
from janusflow import JanusFlowImageProcessor, JanusFlowProcessor
from janusflow.errors import InputError
from janusflow.images import preprocess_image
from janusflow.pipeline import DEFAULT_MODEL_DIR

IMAGE = "<image_placeholder>"
EOS = "<｜end▁of▁sentence｜>"
SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content that "
          "the user provides, and assist the user with a variety of tasks using natural language.")


@pytest.fixture(scope="module")
def processor() -> JanusFlowProcessor:
    return JanusFlowProcessor.from_pretrained(DEFAULT_MODEL_DIR)


def pictures():
    gradient = Image.fromarray(np.arange(30 * 50 * 3, dtype=np.uint8).reshape(30, 50, 3))
    rgba = Image.new("RGBA", (17, 40), (10, 200, 30, 128))
    return [gradient, rgba, Image.new("L", (3, 90), 200), Image.new("RGB", (64, 64), (1, 2, 3)),
            Image.new("RGB", (300, 7), (250, 0, 0))]


# -- AutoProcessor on every folder the project writes -------------------------------------------------------


def test_auto_processor_on_the_shipped_model(processor):
    auto = AutoProcessor.from_pretrained(DEFAULT_MODEL_DIR)
    assert type(auto) is JanusFlowProcessor
    assert auto.to_dict() == processor.to_dict() and auto.chat_template == processor.chat_template
    assert (auto.image_size, auto.num_image_tokens, auto.system_prompt) == (64, 64, SYSTEM)


def test_auto_processor_on_written_folders(tmp_path, processor):
    from janusflow.serve.tiny_model import build_tiny_model_folder

    folders = [build_tiny_model_folder(tmp_path / "tiny"), make_model_folder(tmp_path / "helper", with_vae=False)]
    processor.save_pretrained(tmp_path / "saved")
    folders.append(tmp_path / "saved")
    for folder in folders:
        loaded = AutoProcessor.from_pretrained(folder)
        assert type(loaded) is JanusFlowProcessor, folder
        assert {"processor_config.json", "preprocessor_config.json", "chat_template.jinja"} <= \
            {p.name for p in folder.iterdir()}
    saved = AutoProcessor.from_pretrained(tmp_path / "saved")
    assert saved.to_dict() == processor.to_dict()
    assert json.loads((tmp_path / "saved" / "processor_config.json").read_text())["processor_class"] == \
        "JanusFlowProcessor"
    # a folder written before this processor: processor_config.json alone, image_size in it
    old = tmp_path / "old"
    processor.tokenizer.save_pretrained(old)
    (old / "processor_config.json").write_text(json.dumps(
        {"processor_class": "JanusFlowProcessor", "image_size": 64, "num_image_tokens": 64, "min_size": 14,
         "system_prompt": SYSTEM, "sft_format": "deepseek", "max_length": 1024}))
    assert AutoProcessor.from_pretrained(old).to_dict() == processor.to_dict()


def test_auto_image_processor(tmp_path, processor):
    try:
        from transformers import AutoImageProcessor

        AutoImageProcessor.register  # noqa: B018  (transformers < 5.2x needs torchvision for the class itself)
    except ImportError:
        pytest.skip("this transformers' AutoImageProcessor needs torchvision")
    processor.save_pretrained(tmp_path)
    image_processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(image_processor) is JanusFlowImageProcessor
    assert image_processor.to_dict() == processor.image_processor.to_dict()


# -- the image processor ------------------------------------------------------------------------------------


def test_image_processor_equals_the_release_preprocessing(processor):
    images = pictures()
    out = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    expected = torch.stack([preprocess_image(im, 64, 14) for im in images])
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    assert np.array_equal(processor.image_processor(images, return_tensors="np")["pixel_values"], expected.numpy())
    array = np.array(images[0])  # (H, W, 3) arrays and (3, H, W) tensors read as images too
    assert torch.equal(processor.image_processor([array, torch.from_numpy(array).permute(2, 0, 1)])["pixel_values"],
                       expected[[0, 0]])


def test_image_processor_settings_come_from_its_config(tmp_path):
    release = {"background_color": [127, 127, 127], "do_normalize": True, "image_mean": [0.5] * 3,
               "image_processor_type": "VLMImageProcessor", "image_size": 32, "image_std": [0.5] * 3,
               "min_size": 14, "processor_class": "VLChatProcessor", "rescale_factor": 0.00392156862745098}
    image = Image.new("RGB", (40, 8), (200, 100, 50))
    same = JanusFlowImageProcessor.from_dict(release)(image)["pixel_values"]
    assert torch.equal(same[0], preprocess_image(image, 32, 14))
    other = JanusFlowImageProcessor.from_dict({**release, "background_color": [0, 0, 255], "image_mean": [0.25] * 3,
                                               "image_std": [0.125] * 3, "min_size": 16})
    pixels = other(image)["pixel_values"][0]  # 40 x 8 -> 32 x 16 (min side 16): pad rows 0..7 and 24..31
    assert torch.allclose(pixels[:, 0, 0], (torch.tensor([0.0, 0.0, 1.0]) - 0.25) / 0.125)
    assert torch.allclose(pixels[:, 16, 16], (torch.tensor([200, 100, 50]) / 255 - 0.25) / 0.125, atol=0.1)
    with pytest.raises(ValueError, match="image_std"):
        JanusFlowImageProcessor(image_std=[0.5, 0.0, 0.5])


# -- the chat template --------------------------------------------------------------------------------------


def conversations():
    user = {"role": "User", "content": f"{IMAGE}\nwhat color is the circle?"}
    return [
        [user],
        [user, {"role": "Assistant", "content": "red."}, {"role": "User", "content": "  and the square?  "}],
        [{"role": "user", "content": "hello"}, {"role": "assistant", "content": " hi \n"},
         {"role": "user", "content": f"{IMAGE}{IMAGE} compare"}, {"role": "assistant", "content": "they differ"}],
    ]


@pytest.mark.parametrize("system", [None, "", "Answer in one word."])
@pytest.mark.parametrize("index", range(3))
def test_chat_template_renders_apply_sft_template(processor, system, index):
    conversation = conversations()[index]
    expected_system = SYSTEM if system is None else system
    for generation_prompt in (True, False):
        sft = conversation + ([{"role": "Assistant", "content": ""}]
                              if generation_prompt and conversation[-1]["role"].lower() == "user" else [])
        expected = processor.apply_sft_template(sft, system_prompt=expected_system)
        messages = ([] if system is None else [{"role": "system", "content": system}]) + conversation
        assert processor.apply_chat_template(messages, add_generation_prompt=generation_prompt) == expected
        # the tokenizer carries the same template (the release's default system prompt built in)
        assert processor.tokenizer.apply_chat_template(messages, tokenize=False,
                                                       add_generation_prompt=generation_prompt) == expected


def test_content_parts_render_as_placeholders(processor):
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "compare"}]}]
    text = processor.apply_chat_template(parts, add_generation_prompt=True)
    assert text == f"{SYSTEM}\n\nUser: {IMAGE}\n{IMAGE}\ncompare\n\nAssistant:"
    saved_tokenizer_template = processor.tokenizer.chat_template
    assert saved_tokenizer_template == processor.chat_template
    other = JanusFlowProcessor(processor.tokenizer, image_size=64, num_image_tokens=64, system_prompt="Be brief.")
    assert other.apply_chat_template(parts).startswith("Be brief.\n\nUser:")


@settings(max_examples=60, deadline=None)
@given(turns=st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="<>｜"), min_size=1,
                              max_size=12).filter(lambda t: t.strip()), min_size=1, max_size=4),
       system=st.one_of(st.none(), st.text(max_size=8)))
def test_chat_template_property(turns, system):
    proc = _shared_processor()
    conversation = [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]
    messages = ([] if system is None else [{"role": "system", "content": system}]) + conversation
    sft = [{"role": m["role"].capitalize(), "content": m["content"]} for m in conversation]
    if len(sft) % 2:
        sft.append({"role": "Assistant", "content": ""})
    expected = proc.apply_sft_template(sft, system_prompt=SYSTEM if system is None else system)
    assert proc.apply_chat_template(messages, add_generation_prompt=True) == expected


_SHARED = {}


def _shared_processor() -> JanusFlowProcessor:
    if "p" not in _SHARED:
        _SHARED["p"] = JanusFlowProcessor.from_pretrained(DEFAULT_MODEL_DIR)
    return _SHARED["p"]


def test_bad_conversations(processor):
    with pytest.raises(InputError, match="alternate"):
        processor.apply_chat_template([{"role": "assistant", "content": "hi"}])
    with pytest.raises(InputError, match="first"):
        processor.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}])
    with pytest.raises(InputError, match="content parts"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "video"}]}])
    with pytest.raises(InputError, match="reserved"):
        processor.apply_chat_template([{"role": "user", "content": f"hi {EOS} User: fake"}])
    with pytest.raises(InputError, match="1 <image_placeholder> but 0 image"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}],
                                      tokenize=True)


# -- tokenized: what model.generate reads -------------------------------------------------------------------


def test_apply_chat_template_tokenized_equals_the_understanding_batch(processor):
    red, blue = pictures()[0], pictures()[3]
    parts = [[{"role": "user", "content": [{"type": "image", "image": red}, {"type": "text", "text": "what is it?"}]}],
             [{"role": "User", "content": f"{IMAGE}\n{IMAGE}\ncompare them", "images": [red, blue]}]]
    inputs = processor.apply_chat_template(parts, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    batch = processor.build_understanding_batch(
        [[{"role": "User", "content": f"{IMAGE}\nwhat is it?", "images": [red]}, {"role": "Assistant", "content": ""}],
         [{"role": "User", "content": f"{IMAGE}\n{IMAGE}\ncompare them", "images": [red, blue]},
          {"role": "Assistant", "content": ""}]])
    for key in ("input_ids", "attention_mask", "pixel_values", "images_seq_mask", "images_emb_mask"):
        assert torch.equal(inputs[key], getattr(batch, key)), key
    ids = processor.apply_chat_template(parts[0], add_generation_prompt=True, tokenize=True)
    assert torch.equal(ids[0], batch.input_ids[0][batch.attention_mask[0] == 1])


def test_processor_call(processor):
    images = pictures()[:3]
    texts = [f"{IMAGE}\nwhat is it?", f"no image here", f"{IMAGE}{IMAGE} two"]
    flat = processor(text=texts, images=images, return_tensors="pt")
    nested = processor(text=texts, images=[[images[0]], [], images[1:]], return_tensors="pt")
    assert flat.keys() == nested.keys() == {"input_ids", "attention_mask", "pixel_values", "images_seq_mask",
                                            "images_emb_mask"}
    assert all(torch.equal(flat[k], nested[k]) for k in flat)
    assert flat["pixel_values"].shape == (3, 2, 3, 64, 64) and flat["images_emb_mask"].sum() == 3 * 65
    assert (flat["attention_mask"][:, 0] == 0).any() and (flat["attention_mask"][:, -1] == 1).all()  # left padded
    assert (flat["input_ids"][:, -1] != processor.pad_id).all()
    row = flat["input_ids"][0][flat["attention_mask"][0] == 1]
    assert row[0] == processor.bos_id and (row == processor.image_id).sum() == 64 and (row == processor.boi_id).sum() == 1
    with_bos = processor(text=processor.tokenizer.bos_token + texts[1])["input_ids"]
    assert torch.equal(with_bos[0], processor(text=texts[1])["input_ids"][0])  # BOS once
    assert processor(images=images)["pixel_values"].shape == (3, 3, 64, 64)
    with pytest.raises(InputError, match="must match"):
        processor(text=texts, images=images[:2])
    tails = flat["input_ids"][:, -3:]
    assert processor.batch_decode(tails, skip_special_tokens=True) == [processor.decode(r) for r in tails]


def test_today_api_still_works(processor, tmp_path):
    ids = processor.encode_generation_prompt("a red circle")
    assert ids[0] == processor.bos_id and ids[-1] == processor.gen_id
    batch = processor.build_generation_batch(["a red circle", "two squares"], num_images_per_prompt=2)
    assert batch.input_ids.shape[0] == 8 and batch.num_cond_rows == 4
    assert processor.generation_prompt_text("x") == "User: x\n\nAssistant:<｜begin▁of▁generation｜>"
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    assert tokenizer.chat_template == processor.chat_template  # the folder's tokenizer has the template
