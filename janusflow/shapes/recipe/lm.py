"""Recipe part 3: a small Llama LM (transformers `LlamaForCausalLM`) pre-trained on the world's text.

Documents come from `corpus.sample_text` (descriptions, question/answer chats with the scene as
text, prompt -> description chats), BOS first, EOS closing every assistant turn (the template's),
packed back to back into rows of `seq_len` tokens (GPT-style: no padding; attention may look back
across a document boundary, which BOS marks). Loss: next-token cross-entropy, answer tokens
(assistant turns, EOS included) weighted w_i = 1 + answer_weight, others w_i = 1, normalised by the
weights of the global batch:

    loss = -(sum_{b, i} w_{b, i+1} log p(x_{b, i+1} | x_{b, <= i})) / (sum_{b, i} w_{b, i+1})

Evaluation reads the world's logic back from text: for a fresh scene described in words, a
question, greedy decoding until EOS, scored by `questions.score_answer` per form.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...config import LanguageConfig
from ...processor import ROLES
from ...train.trainer import share
from ..questions import describe, sample_question, score_answer
from ..sampler import sample_scene
from .corpus import chat_text, context_question, sample_text
from .data import EVAL_SEED, batch_rng


# A description orders the objects left to right but gives no distances and no heights, so it does
# not decide a relation question (>= 8 px apart, above/below); the image will.
UNANSWERABLE = ("relation",)


# Answer tokens (about 15% of the tokens) are the only ones the context decides; the rest is random
# descriptions and questions. Weighing them 1 + 4 gives them about half of the gradient.
ANSWER_WEIGHT = 4.0


def default_language(vocab_size: int) -> LanguageConfig:
    return LanguageConfig(vocab_size=vocab_size, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)


def tiny_language(vocab_size: int) -> LanguageConfig:
    return LanguageConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)


def packed_rows(tokenizer, rng: np.random.Generator, rows: int, length: int) -> torch.Tensor:
    """(rows, length) ids: documents from `sample_text`, each BOS first, back to back (a document
    runs on into the next row; the tail of the last one is dropped). No padding is computed."""
    stream: list[int] = []
    while len(stream) < rows * length:
        stream += [tokenizer.bos_token_id] + tokenizer.encode(sample_text(rng), add_special_tokens=False)
    return torch.tensor(stream[:rows * length], dtype=torch.int64).view(rows, length)


def answer_mask(tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the tokens of assistant answers, from the one after "Assistant:" to EOS."""
    marker = tokenizer.encode(f"{ROLES[1]}:", add_special_tokens=False)  # e.g. ["Assistant", ":"]
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for row, tokens in enumerate(ids.tolist()):
        inside = False
        for t in range(len(tokens)):
            if tokens[max(0, t - len(marker) + 1):t + 1] == marker:
                inside = True
                continue
            mask[row, t] = inside
            if tokens[t] == tokenizer.eos_token_id:
                inside = False
    return mask


class LMObjective(nn.Module):
    """Weighted next-token cross-entropy: an answer token weighs `1 + answer_weight`, any other 1."""

    def __init__(self, cfg: LanguageConfig, answer_weight: float = 0.0):
        super().__init__()
        from transformers import LlamaForCausalLM

        self.cfg = cfg
        self.answer_weight = answer_weight
        self.llm = LlamaForCausalLM(cfg.to_llama())

    def forward(self, batch: dict[str, torch.Tensor], totals: dict[str, float]):
        ids, answer = batch["ids"], batch["answer"][:, 1:].float()  # predicted positions 1..T-1
        logits = self.llm(input_ids=ids).logits[:, :-1]  # (B, T-1, V)
        ce = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view_as(answer)
        weights = 1.0 + self.answer_weight * answer
        loss = share((weights * ce).sum(), totals, "ce_weight")
        return loss, {"ce": float(share(ce.detach().sum(), totals, "ce_tokens")),
                      "ce_answers": float(share((ce.detach() * answer).sum(), totals, "answer_tokens"))}


class LMTask:
    """Recipe part 3 as a `janusflow.train.TrainTask`. Batch `step` is a pure function of (seed, step)."""

    def __init__(self, tokenizer, cfg: LanguageConfig | None = None, batch_size: int = 16, seq_len: int = 128,
                 seed: int = 3, answer_weight: float = ANSWER_WEIGHT):
        self.tokenizer = tokenizer
        self.cfg = cfg or default_language(len(tokenizer))
        if self.cfg.vocab_size < len(tokenizer):
            raise ValueError(f"vocab_size {self.cfg.vocab_size} < tokenizer size {len(tokenizer)}")
        self.batch_size = batch_size  # rows of seq_len packed tokens
        self.seq_len = seq_len
        self.seed = seed
        self.module = LMObjective(self.cfg, answer_weight)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self.module.named_parameters())

    def micro_batches(self, step: int, shard) -> list[dict[str, torch.Tensor]]:
        ids = packed_rows(self.tokenizer, batch_rng(self.seed, step), self.batch_size, self.seq_len)
        answer = answer_mask(self.tokenizer, ids)
        return [{"ids": ids[lo:hi], "answer": answer[lo:hi]}
                for lo, hi in (shard.bounds(len(ids), m) for m in range(shard.grad_accum))]

    def counts(self, batch) -> dict[str, float]:
        rows, length = batch["ids"].shape
        answers = float(batch["answer"][:, 1:].sum())
        return {"samples": float(rows), "tokens": float(rows * length), "ce_tokens": float(rows * (length - 1)),
                "answer_tokens": answers,
                "ce_weight": float(rows * (length - 1)) + self.module.answer_weight * answers}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def export(self, directory: Path) -> None:
        self.module.llm.save_pretrained(directory)


@torch.no_grad()
def greedy_answers(llm, tokenizer, prompts: list[str], max_new_tokens: int = 24) -> list[str]:
    """Greedy continuation of each prompt text (BOS prepended) until EOS, batched, left-padded."""
    rows = [[tokenizer.bos_token_id] + tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    length = max(len(r) for r in rows)
    ids = torch.tensor([[tokenizer.pad_token_id] * (length - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    out = llm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(row[length:], skip_special_tokens=True).strip() for row in out]


@torch.no_grad()
def evaluate_lm(llm, tokenizer, num_questions: int = 300, batch_size: int = 50,
                seed: int = EVAL_SEED + 3) -> dict[str, float]:
    """Text-only QA accuracy on fresh scenes: "qa_<form>" per form, "qa_all" over all questions,
    "qa_acc" over the forms the description answers (all but `relation`, see UNANSWERABLE)."""
    was_training = llm.training
    llm.eval()
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(num_questions):
        scene = sample_scene(rng)
        qa = sample_question(rng, scene)
        items.append((qa, chat_text([(context_question(describe(scene), qa.question), "")])))
    by_form: dict[str, list[bool]] = defaultdict(list)
    for start in range(0, num_questions, batch_size):
        chunk = items[start:start + batch_size]
        for (qa, _), answer in zip(chunk, greedy_answers(llm, tokenizer, [p for _, p in chunk])):
            by_form[qa.form].append(score_answer(qa.form, answer, qa.answer))
    llm.train(was_training)
    scores = {f"qa_{form}": float(np.mean(v)) for form, v in sorted(by_form.items())}
    scores["qa_acc"] = float(np.mean([c for form, v in by_form.items() if form not in UNANSWERABLE for c in v]))
    scores["qa_all"] = float(np.mean([c for v in by_form.values() for c in v]))
    return scores
