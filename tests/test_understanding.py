"""Understanding: decoding through ``generate()`` against the hand-written loop it replaced and the
full-recompute reference, stopping, batches with left padding, sampling, streaming, multi-turn
conversations (the LLaVA layout: test_eval_llava.py)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from inference_helpers import tiny_model, tiny_processor
from janusflow.errors import InputError
from janusflow.understanding import (
    Conversation, DecodingConfig, JanusFlowChat, decode, user_message,
)
from reference_decoding import reference_decode, select_next

RED = Image.new("RGB", (40, 30), (200, 10, 10))
BLUE = Image.new("RGB", (20, 36), (20, 60, 220))



def gradient():
    return Image.fromarray(torch.arange(32 * 32 * 3).reshape(32, 32, 3).remainder(251).byte().numpy())


@pytest.fixture(scope="module")
def chat():
    model = tiny_model(seed=2)
    return JanusFlowChat(model, tiny_processor(model))


def conversations():
    return [
        [user_message("what color is the shape?", [RED])],
        [user_message("describe both pictures", [BLUE, gradient()])],
        [user_message("hello")],  # no image
        [user_message("what color?", [RED]), {"role": "Assistant", "content": "red"},
         user_message("and now?", [BLUE])],  # two turns, an image in each
    ]


def batch_of(chat, convs):
    return chat.processor.build_understanding_batch([[*c, {"role": "Assistant", "content": ""}] for c in convs])


def run(chat, convs, **kwargs):
    config = DecodingConfig(**{"max_new_tokens": 8, **kwargs})
    return decode(chat.model, batch_of(chat, convs), config, chat.processor.eos_id, chat.processor.pad_id,
                  record_logits=True)


def naive_greedy(model, batch, steps: int) -> list[list[int]]:
    """The plainest reference: one row, no padding, full sequence re-embedded every step, argmax."""
    ids = batch.input_ids
    out = []
    for _ in range(steps):
        full = torch.cat([ids, torch.tensor([out], dtype=torch.long)], dim=1)
        seq_mask = torch.cat([batch.images_seq_mask, torch.zeros(1, len(out), dtype=torch.bool)], dim=1)
        with torch.no_grad():
            logits = model.forward_understanding(full, torch.ones_like(full), batch.pixel_values, seq_mask,
                                                 batch.images_emb_mask).logits
        out.append(int(logits[0, -1].argmax()))
    return out


def test_cached_greedy_equals_naive_full_recompute(chat):
    for conv in conversations():
        batch = batch_of(chat, [conv])
        expected = naive_greedy(chat.model, batch, 6)
        got = run(chat, [conv], max_new_tokens=6)
        assert got.tokens[0] == expected[: len(got.tokens[0])]


def test_cached_equals_reference_path_logits(chat):
    fast = run(chat, conversations())
    slow = run(chat, conversations(), use_cache=False)
    assert fast.tokens == slow.tokens
    torch.testing.assert_close(fast.logits, slow.logits, rtol=0, atol=1e-4)
    assert fast.logits.shape[:2] == (4, 8)


def test_left_padded_batch_equals_each_alone(chat):
    convs = conversations()
    together = run(chat, convs)
    assert (batch_of(chat, convs).attention_mask == 0).any()  # really padded
    for i, conv in enumerate(convs):
        alone = run(chat, [conv])
        assert together.tokens[i] == alone.tokens[0]
        torch.testing.assert_close(together.logits[i], alone.logits[0], rtol=0, atol=1e-4)


def test_the_image_matters(chat):
    a = run(chat, [[user_message("what is this?", [RED])]]).logits
    b = run(chat, [[user_message("what is this?", [BLUE])]]).logits
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-3


def test_stops_at_end_of_sentence(chat):
    convs = conversations()[:2]
    free = run(chat, convs, max_new_tokens=8)
    stop_token = free.tokens[0][3]  # pretend this is the end-of-sentence token
    first = free.tokens[0].index(stop_token)
    batch = batch_of(chat, convs)
    stopped = decode(chat.model, batch, DecodingConfig(max_new_tokens=8), stop_token, chat.processor.pad_id)
    assert stopped.tokens[0] == free.tokens[0][:first] and stopped.stopped_at_eos[0]
    row1 = free.tokens[1]
    expect1 = row1[: row1.index(stop_token)] if stop_token in row1 else row1
    assert stopped.tokens[1] == expect1


def test_max_new_tokens_and_context(chat, monkeypatch):
    assert all(len(t) == 5 for t in run(chat, conversations(), max_new_tokens=5).tokens)
    batch = batch_of(chat, conversations()[:1])
    T = batch.input_ids.shape[1]
    monkeypatch.setattr(chat.model.config.language, "max_position_embeddings", T + 3)  # a short context
    result = decode(chat.model, batch, DecodingConfig(max_new_tokens=10_000), None, chat.processor.pad_id)
    assert len(result.tokens[0]) == 3  # stops at the model's context
    monkeypatch.setattr(chat.model.config.language, "max_position_embeddings", T)
    with pytest.raises(InputError, match="no room"):
        decode(chat.model, batch_of(chat, conversations()[:1]), DecodingConfig(), None, chat.processor.pad_id)


def test_sampling_reproducible_and_top_p(chat):
    convs = conversations()[:2]
    batch = lambda: batch_of(chat, convs)  # noqa: E731
    cfg = DecodingConfig(max_new_tokens=6, temperature=1.5)
    proc = chat.processor
    a = decode(chat.model, batch(), cfg, proc.eos_id, proc.pad_id, torch.Generator().manual_seed(1)).tokens
    b = decode(chat.model, batch(), cfg, proc.eos_id, proc.pad_id, torch.Generator().manual_seed(1)).tokens
    c = decode(chat.model, batch(), cfg, proc.eos_id, proc.pad_id, torch.Generator().manual_seed(2)).tokens
    greedy = decode(chat.model, batch(), DecodingConfig(max_new_tokens=6), proc.eos_id, proc.pad_id).tokens
    assert a == b and a != c and a != greedy
    tiny_p = DecodingConfig(max_new_tokens=6, temperature=1.5, top_p=1e-6)  # only the most likely token survives
    sampled = decode(chat.model, batch(), tiny_p, proc.eos_id, proc.pad_id, torch.Generator().manual_seed(1)).tokens
    assert sampled == greedy


def test_select_next_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.3, 0.15]]))
    g = torch.Generator().manual_seed(0)
    draws = [int(select_next(logits, DecodingConfig(temperature=1.0, top_p=0.7), g)) for _ in range(300)]
    assert set(draws) == {1, 2}  # 0.5 + 0.3 >= 0.7: tokens 3 and 0 are cut
    draws = [int(select_next(logits, DecodingConfig(temperature=1.0, top_p=0.85), g)) for _ in range(300)]
    assert set(draws) == {1, 2, 3}
    assert int(select_next(logits, DecodingConfig())) == 1


def test_streaming_yields_the_same_text(chat, capsys):
    from transformers import TextIteratorStreamer, TextStreamer

    conv = [conversations()[0]]
    answer = chat.answer(conv, max_new_tokens=12)[0]
    tokens = chat.generate(conv, max_new_tokens=12).tokens[0]
    streamer = TextIteratorStreamer(chat.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = threading.Thread(target=chat.generate, args=(conv,), kwargs=dict(streamer=streamer, max_new_tokens=12))
    thread.start()
    pieces = list(streamer)
    thread.join()
    assert "".join(pieces) == chat.processor.decode(tokens)
    assert "".join(pieces).strip() == answer
    chat.generate(conv, streamer=TextStreamer(chat.processor.tokenizer, skip_prompt=True, skip_special_tokens=True),
                  max_new_tokens=12)
    assert capsys.readouterr().out == chat.processor.decode(tokens) + "\n"
    with pytest.raises(InputError, match="batch of one"):
        chat.generate(conversations()[:2], streamer=streamer)


def test_multi_turn_conversation(chat):
    conversation = Conversation()
    conversation.add_user("what color?", [RED])
    first = chat.reply(conversation, max_new_tokens=4)
    conversation.add_user("and this one?", [BLUE])
    second = chat.reply(conversation, max_new_tokens=4)
    assert [m["role"] for m in conversation.messages] == ["User", "Assistant"] * 2
    assert conversation.messages[1]["content"] == first and conversation.messages[3]["content"] == second
    text = chat.processor.apply_sft_template(conversation.messages[:3] + [{"role": "Assistant", "content": ""}])
    assert text.count("<image_placeholder>") == 2 and text.endswith("Assistant:")


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_decoding_settings(chat, bad):
    with pytest.raises(InputError):
        chat.answer(conversations()[:1], **bad)


def test_bad_questions(chat):
    with pytest.raises(InputError, match="empty"):
        user_message("   ", [RED])
    with pytest.raises(InputError, match="max_length"):
        chat.ask([], "word " * 600)
    with pytest.raises(InputError, match="not found"):
        chat.ask(["/nonexistent/image.png"], "what?")


def test_streamer_ends_on_errors(chat):
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(chat.processor.tokenizer, skip_prompt=True, timeout=5)
    batch = batch_of(chat, conversations()[:1])
    with pytest.raises(InputError):
        decode(chat.model, batch, DecodingConfig(max_new_tokens=0), None, 0, streamer=streamer)
    assert "".join(streamer) == ""  # the consumer is released (no timeout error)


def test_greedy_equals_transformers_generate(chat):
    """A second reference: transformers' own ``generate(inputs_embeds=...)`` on the same padded batch."""
    convs = conversations()
    batch = batch_of(chat, convs)
    ours = decode(chat.model, batch_of(chat, convs), DecodingConfig(max_new_tokens=6), None, 0).tokens
    with torch.no_grad():
        embeds = chat.model.prepare_inputs_embeds(batch.input_ids, batch.pixel_values, batch.images_seq_mask,
                                                  batch.images_emb_mask)
        theirs = chat.model.language_model.generate(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                                                    max_new_tokens=6, do_sample=False, eos_token_id=None,
                                                    pad_token_id=chat.processor.pad_id)
    assert theirs.tolist() == ours


def test_generate_equals_the_replaced_loop(chat):
    """``decode`` (``model.generate``) gives the ids and logits of the hand-written loop it replaced."""
    convs = conversations()
    for use_cache in (True, False):
        cfg = DecodingConfig(max_new_tokens=8, use_cache=use_cache)
        new = decode(chat.model, batch_of(chat, convs), cfg, chat.processor.eos_id, chat.processor.pad_id,
                     record_logits=True)
        old = reference_decode(chat.model, batch_of(chat, convs), cfg, chat.processor.eos_id,
                               chat.processor.pad_id, record_logits=True)
        assert new.tokens == old.tokens and new.stopped_at_eos == old.stopped_at_eos
        torch.testing.assert_close(new.logits, old.logits, rtol=0, atol=1e-5)


def test_generate_equals_the_replaced_loop_on_the_embedded_model():
    """Greedy answers of the shipped model: the same ids as before, question by question and batched."""
    from janusflow.pipeline import DEFAULT_MODEL_DIR, load_model_and_processor
    from janusflow.shapes.render import render
    from janusflow.shapes.sampler import sample_scene

    model, processor = load_model_and_processor(DEFAULT_MODEL_DIR, "cpu")
    chat = JanusFlowChat(model, processor)
    rng = np.random.default_rng(3)
    images = [render(sample_scene(rng)) for _ in range(3)]
    questions = ["how many shapes are there?", "what color is the circle?", "describe the picture"]
    convs = [[user_message(q, [im])] for q, im in zip(questions, images)] + [[user_message("hello")]]
    cfg = DecodingConfig(max_new_tokens=16)
    old = reference_decode(model, batch_of(chat, convs), cfg, processor.eos_id, processor.pad_id).tokens
    assert decode(model, batch_of(chat, convs), cfg, processor.eos_id, processor.pad_id).tokens == old
    assert [chat.generate([c], max_new_tokens=16).tokens[0] for c in convs] == old
    assert any(len(t) > 1 for t in old)  # real answers, not an immediate end


def test_a_system_prompt_per_call_equals_the_processors_own(chat):
    """``system_prompt=`` renders as a processor whose own system prompt it is, and leaves the processor as it was."""
    import copy

    convs = conversations()[:2]
    default = chat.processor.system_prompt
    for system in ("Answer in one word.", ""):
        other = copy.copy(chat.processor)
        other.system_prompt = system
        prompts = [[*c, {"role": "Assistant", "content": ""}] for c in convs]
        assert torch.equal(chat.processor.build_understanding_batch(prompts, system_prompt=system).input_ids,
                           other.build_understanding_batch(prompts).input_ids)
        got = chat.generate(convs, DecodingConfig(max_new_tokens=4), system_prompt=system)
        assert got.tokens == JanusFlowChat(chat.model, other).generate(convs, DecodingConfig(max_new_tokens=4)).tokens
    assert chat.processor.system_prompt == default
    assert not torch.equal(chat.processor.build_understanding_batch(prompts, system_prompt="x").input_ids,
                           chat.processor.build_understanding_batch(prompts).input_ids)
