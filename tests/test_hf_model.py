"""JanusFlow as a transformers model: Auto classes on our folders and the release's layout, dtype and
device_map, sharded save_pretrained, and generate() with every GenerationConfig option and streamers."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from transformers import (
    AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, GenerationConfig, PretrainedConfig,
    TextIteratorStreamer, TextStreamer,
)

import janusflow
from inference_helpers import make_model_folder, tiny_model, tiny_processor
from janusflow import JanusFlowConfig, JanusFlowForConditionalGeneration, JanusFlowModel, JanusFlowProcessor, convert
from janusflow.errors import CheckpointError, InputError, JanusFlowError
from janusflow.pipeline import DEFAULT_MODEL_DIR
from janusflow.understanding import user_message

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "parity-small"  # the release's layout (config.json with language_config, official keys)


def shapes_picture() -> Image.Image:
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).ellipse((18, 18, 46, 46), fill=(220, 30, 30))
    return image


@pytest.fixture(scope="module")
def embedded():
    return AutoModelForImageTextToText.from_pretrained(DEFAULT_MODEL_DIR), AutoProcessor.from_pretrained(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model(seed=2)
    return model, tiny_processor(model)


def chat_inputs(processor, questions_and_images, **kwargs):
    conversations = [[{"role": "user", "content": [*({"type": "image", "image": im} for im in images),
                                                    {"type": "text", "text": question}]}]
                     for question, images in questions_and_images]
    return processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True,
                                         return_dict=True, return_tensors="pt", **kwargs)


# -- classes, Auto registration, config ---------------------------------------------------------------------


def test_the_classes_are_transformers_classes():
    from transformers import GenerationMixin, PreTrainedModel, ProcessorMixin

    assert issubclass(JanusFlowConfig, PretrainedConfig) and JanusFlowConfig.model_type == "janusflow"
    assert issubclass(JanusFlowForConditionalGeneration, PreTrainedModel)
    assert issubclass(JanusFlowForConditionalGeneration, GenerationMixin)
    assert JanusFlowModel is JanusFlowForConditionalGeneration and JanusFlowForConditionalGeneration.can_generate()
    assert issubclass(JanusFlowProcessor, ProcessorMixin)
    assert janusflow.JanusFlowImageProcessor.__mro__[1].__name__ == "BaseImageProcessor"


def test_auto_config_round_trips_our_folder(tmp_path):
    config = AutoConfig.from_pretrained(DEFAULT_MODEL_DIR)
    assert type(config) is JanusFlowConfig
    assert config == JanusFlowConfig.load(DEFAULT_MODEL_DIR / "config.json")
    assert (config.hidden_size, config.num_image_tokens, config.num_und_image_tokens) == (256, 64, 64)
    assert (config.eos_token_id, config.image_token_id, config.boi_token_id) == (1, 3, 4)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "janusflow" and saved["language"]["hidden_size"] == 256
    again = AutoConfig.from_pretrained(tmp_path)
    assert again == config and again.to_dict()["gen_vision"] == config.to_dict()["gen_vision"]
    small = JanusFlowConfig.from_name("small")
    assert small != config and small.num_image_tokens == 64 and small.language.num_hidden_layers == 4


def test_auto_config_reads_the_official_layout():
    config = AutoConfig.from_pretrained(OFFICIAL)
    assert type(config) is JanusFlowConfig
    assert config == convert.config_from_official(json.loads((OFFICIAL / "config.json").read_text()))
    release = json.loads((FIXTURES / "janusflow-1.3b-config.json").read_text())
    assert JanusFlowConfig.from_name("janusflow-1.3b") == convert.JanusFlowOfficialConfig.from_dict(release)


@pytest.mark.parametrize("auto", [AutoModel, AutoModelForImageTextToText])
def test_auto_model_loads_the_shipped_weights_bit_exactly(auto):
    model = auto.from_pretrained(DEFAULT_MODEL_DIR)
    assert type(model) is JanusFlowForConditionalGeneration and model.dtype == torch.float32 and not model.training
    stored = load_file(DEFAULT_MODEL_DIR / "model.safetensors")
    state = model.state_dict()
    assert stored.keys() == state.keys()
    assert all(torch.equal(stored[k].float(), state[k]) for k in stored)


def test_auto_model_reads_the_official_layout_through_the_key_map():
    model = AutoModel.from_pretrained(OFFICIAL)
    official = load_file(OFFICIAL / "model.safetensors")
    expected = convert.official_to_ours(official, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    assert all(torch.equal(expected[k], v) for k, v in model.state_dict().items())


def test_dtype_and_device_map():
    assert AutoModel.from_pretrained(DEFAULT_MODEL_DIR, dtype="bfloat16").dtype == torch.bfloat16
    assert AutoModel.from_pretrained(DEFAULT_MODEL_DIR, torch_dtype=torch.bfloat16).dtype == torch.bfloat16
    auto = AutoModel.from_pretrained(DEFAULT_MODEL_DIR, dtype="auto")  # the stored weights' dtype
    assert auto.dtype == torch.float16 and all(p.dtype == torch.float16 for p in auto.parameters())
    for device_map in ("cpu", {"": "cpu"}, {"language_model": "cpu", "und_encoder": "cpu"}, "auto"):
        model = AutoModel.from_pretrained(DEFAULT_MODEL_DIR, device_map=device_map)
        expected = "cuda" if device_map == "auto" and torch.cuda.is_available() else "cpu"
        assert {p.device.type for p in model.parameters()} == {expected}
    with pytest.raises(InputError, match="one device"):
        AutoModel.from_pretrained(DEFAULT_MODEL_DIR, device_map={"language_model": 0, "und_encoder": "cpu"})
    with pytest.raises(JanusFlowError, match="dtype"):
        AutoModel.from_pretrained(DEFAULT_MODEL_DIR, dtype="float77")
    with pytest.raises(JanusFlowError, match="dtype"):
        JanusFlowModel.from_pretrained(DEFAULT_MODEL_DIR, dtype=torch.int8)
    with pytest.raises(TypeError, match="quantization_config"):
        JanusFlowModel.from_pretrained(DEFAULT_MODEL_DIR, quantization_config={"load_in_8bit": True})
    with pytest.raises(CheckpointError, match="not found"):
        JanusFlowModel.from_pretrained(DEFAULT_MODEL_DIR / "nowhere")


def test_sharded_save_pretrained_round_trip(embedded, tmp_path):
    model, _ = embedded
    model.save_pretrained(tmp_path / "sharded", max_shard_size="3MB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 5 and all((tmp_path / "sharded" / s).is_file() for s in shards)
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    again = AutoModel.from_pretrained(tmp_path / "sharded")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert again.config == model.config
    model.save_pretrained(tmp_path / "half", dtype=torch.float16)  # model stays fp32, the files are fp16
    assert model.dtype == torch.float32
    assert json.loads((tmp_path / "half" / "config.json").read_text())["dtype"] == "float16"
    assert AutoModel.from_pretrained(tmp_path / "half", dtype="auto").dtype == torch.float16


def test_token_ids_come_from_the_tokenizer_when_the_config_has_none(tmp_path):
    folder = make_model_folder(tmp_path / "tiny", with_vae=False)
    assert "eos_token_id" not in json.loads((folder / "config.json").read_text())
    model = AutoModel.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert (model.config.eos_token_id, model.config.pad_token_id) == (processor.eos_id, processor.pad_id)
    assert (model.config.image_token_id, model.config.boi_token_id) == (processor.image_id, processor.boi_id)
    assert model.generation_config.eos_token_id == processor.eos_id


# -- generate -----------------------------------------------------------------------------------------------


def test_generate_answers_as_the_chat_helper(embedded):
    model, processor = embedded
    picture = shapes_picture()
    inputs = chat_inputs(processor, [("what color is the shape?", [picture])])
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = processor.decode(out[0, inputs["input_ids"].shape[1]:]).strip()
    assert answer == janusflow.understanding.JanusFlowChat(model, processor).ask([picture], "what color is the shape?",
                                                                                max_new_tokens=12)
    assert answer  # a real answer
    # input_ids, pixel_values and attention_mask alone: the config names the image slots
    lean = model.generate(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                          attention_mask=inputs["attention_mask"], max_new_tokens=12, do_sample=False)
    assert torch.equal(lean, out)


def test_images_are_encoded_on_the_prefill_step_only(tiny):
    model, processor = tiny
    calls = []
    hook = model.und_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        inputs = chat_inputs(processor, [("what is it?", [shapes_picture()])])
        cached = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
        assert len(calls) == 1
        calls.clear()
        full = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False, use_cache=False)
        assert len(calls) == 5 and torch.equal(cached, full)  # the reference path: every step from scratch
    finally:
        hook.remove()


def llm_reference(model, inputs, **settings):
    """The same generation by the bare LLM on the merged embeddings (no JanusFlow code in the loop)."""
    embeds = model.prepare_inputs_embeds(inputs["input_ids"], inputs["pixel_values"], inputs["images_seq_mask"],
                                         inputs["images_emb_mask"])
    return model.language_model.generate(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], **settings)


@pytest.mark.parametrize("settings", [
    dict(do_sample=False),
    dict(do_sample=True, temperature=1.3, top_k=20, top_p=0.9),
    dict(do_sample=True, temperature=0.7, top_k=0, top_p=0.5),
    dict(num_beams=3, do_sample=False),
    dict(num_beams=2, num_return_sequences=2, do_sample=False),
], ids=["greedy", "top-k-top-p", "top-p", "beams", "beams-2-sequences"])
def test_generate_options_equal_the_bare_llm_on_a_padded_batch(tiny, settings):
    model, processor = tiny
    inputs = chat_inputs(processor, [("what color is the shape?", [shapes_picture()]),
                                     ("describe both pictures in a few words", [shapes_picture(), Image.new("RGB", (20, 50))])])
    assert (inputs["attention_mask"] == 0).any()  # left padded
    settings = dict(max_new_tokens=6, pad_token_id=processor.pad_id, eos_token_id=processor.eos_id, **settings)
    torch.manual_seed(7)
    ours = model.generate(**inputs, **settings)[:, inputs["input_ids"].shape[1]:]
    torch.manual_seed(7)
    theirs = llm_reference(model, inputs, **settings)
    assert torch.equal(ours, theirs)


def test_sampling_is_seeded_and_differs_from_greedy(tiny):
    model, processor = tiny
    inputs = chat_inputs(processor, [("what color is the shape?", [shapes_picture()])])
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        runs.append(model.generate(**inputs, max_new_tokens=8, do_sample=True, temperature=1.5, top_k=0))
    greedy = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2]) and not torch.equal(runs[0], greedy)


def test_repetition_penalty_counts_the_prompt(embedded):
    """Text only: our generate is the LLM's own, the penalty included (it reads the prompt ids)."""
    model, processor = embedded
    inputs = processor.apply_chat_template([{"role": "user", "content": "describe the picture"}],
                                           add_generation_prompt=True, tokenize=True, return_dict=True)
    assert set(inputs) == {"input_ids", "attention_mask"}
    settings = dict(max_new_tokens=16, do_sample=False, repetition_penalty=1.5)
    ours = model.generate(**inputs, **settings)
    assert torch.equal(ours, model.language_model.generate(**inputs, **settings, eos_token_id=processor.eos_id,
                                                          pad_token_id=processor.pad_id))
    plain = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    assert not torch.equal(ours, plain)  # a colour named twice is penalised


def test_stop_strings_and_max_new_tokens(embedded):
    model, processor = embedded
    inputs = chat_inputs(processor, [("describe the picture", [shapes_picture()])])
    T = inputs["input_ids"].shape[1]
    free = model.generate(**inputs, max_new_tokens=24, do_sample=False)[0, T:]
    assert len(model.generate(**inputs, max_new_tokens=2, do_sample=False)[0, T:]) == 2
    text = processor.decode(free)
    word = text.split()[1]  # stop at the answer's second word
    stopped = model.generate(**inputs, max_new_tokens=24, do_sample=False, stop_strings=[word],
                             tokenizer=processor.tokenizer)[0, T:]
    assert len(stopped) < len(free) and torch.equal(stopped, free[:len(stopped)])
    assert processor.decode(stopped).endswith(word)


def test_streamers(embedded, capsys):
    model, processor = embedded
    inputs = chat_inputs(processor, [("what color is the shape?", [shapes_picture()])])
    T = inputs["input_ids"].shape[1]
    answer = processor.decode(model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, T:])
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = threading.Thread(target=model.generate, kwargs=dict(**inputs, max_new_tokens=12, do_sample=False,
                                                                 streamer=streamer))
    thread.start()
    assert "".join(streamer) == answer
    thread.join()
    model.generate(**inputs, max_new_tokens=12, do_sample=False,
                   streamer=TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True))
    assert capsys.readouterr().out == answer + "\n"


def test_forward_gives_the_loss_on_labels(tiny):
    model, processor = tiny
    inputs = chat_inputs(processor, [("what is it?", [shapes_picture()])])
    labels = inputs["input_ids"].masked_fill(inputs["images_seq_mask"], -100)
    out = model(**inputs, labels=labels)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.logits.shape[:2] == labels.shape
    with pytest.raises(InputError, match="images_seq_mask"):
        JanusFlowModel(JanusFlowConfig.from_name("tiny"))(input_ids=inputs["input_ids"],
                                                          pixel_values=inputs["pixel_values"])


def test_official_layout_folder_with_the_release_processor_files(tmp_path):
    """A folder as the release ships it (official config and keys, VLChatProcessor files): the Auto classes
    give JanusFlow's, and generate answers as on our layout."""
    ours = make_model_folder(tmp_path / "ours", seed=3, with_vae=False, official_latents=True)
    official = make_model_folder(tmp_path / "official", seed=3, with_vae=False, official=True)
    for name in ("processor_config.json", "preprocessor_config.json", "chat_template.jinja"):
        (official / name).unlink()
    processor = AutoProcessor.from_pretrained(ours)
    (official / "processor_config.json").write_text(json.dumps(
        {"add_special_token": False, "ignore_id": -100, "image_tag": "<image_placeholder>", "mask_prompt": True,
         "num_image_tokens": processor.num_image_tokens, "processor_class": "VLChatProcessor",
         "sft_format": "deepseek"}))
    (official / "preprocessor_config.json").write_text(json.dumps(
        {"background_color": [127, 127, 127], "do_normalize": True, "image_mean": [0.5] * 3,
         "image_processor_type": "VLMImageProcessor", "image_size": processor.image_size, "image_std": [0.5] * 3,
         "min_size": 14, "processor_class": "VLChatProcessor", "rescale_factor": 0.00392156862745098}))
    release_processor = AutoProcessor.from_pretrained(official)
    assert type(release_processor) is JanusFlowProcessor
    settings = {**processor.to_dict(), "max_length": None, "num_gen_image_tokens": processor.num_image_tokens}
    assert release_processor.to_dict() == settings  # the release's files name no context or generation tokens
    models = [AutoModelForImageTextToText.from_pretrained(f) for f in (ours, official)]
    inputs = chat_inputs(release_processor, [("what is it?", [shapes_picture()])])
    a, b = (m.generate(**inputs, max_new_tokens=5, do_sample=False) for m in models)
    assert torch.equal(a, b)
    shutil.rmtree(tmp_path)


def test_chat_helper_keeps_its_api(embedded):
    model, processor = embedded
    chat = janusflow.understanding.JanusFlowChat(model, processor)
    picture = shapes_picture()
    one = chat.ask([picture], "what color is the shape?", max_new_tokens=8)
    assert chat.ask_batch([([picture], "what color is the shape?"), ([], "hello")], max_new_tokens=8)[0] == one
    result = chat.generate([[user_message("what color is the shape?", [picture])]], max_new_tokens=8, num_beams=2)
    assert result.tokens[0] and result.seconds >= result.time_to_first_token > 0
    assert isinstance(GenerationConfig(), GenerationConfig)


def test_transformers_image_text_to_text_pipeline(embedded):
    from transformers import pipeline

    model, processor = embedded
    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    messages = [{"role": "user", "content": [{"type": "image", "image": shapes_picture()},
                                             {"type": "text", "text": "What color is the shape?"}]}]
    out = pipe(text=messages, max_new_tokens=8, return_full_text=False)
    inputs = chat_inputs(processor, [("What color is the shape?", [shapes_picture()])])
    expected = model.generate(**inputs, max_new_tokens=8)[0, inputs["input_ids"].shape[1]:]
    assert out[0]["generated_text"] == processor.decode(expected)
