"""Build a small byte-level BPE tokenizer with the special tokens of the official JanusFlow tokenizer.

The released JanusFlow-1.3B uses DeepSeek-LLM's 102400-token byte-level BPE. Models trained from
scratch here (tests, the shapes world) need a tokenizer that is small, dense (ids 0..V-1, nothing
unused) and built offline from a corpus, but that behaves like the official one where the processor
cares: the same special-token strings, each one id and never split, and BOS prepended by `encode()`
through a TemplateProcessing post-processor (as the official Llama fast tokenizer does).

Byte-level BPE means every string encodes (any UTF-8 byte is in the base alphabet); there is no
unknown token.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

# Exact strings of the official tokenizer (fullwidth bars U+FF5C, U+2581 as the word separator).
BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
PAD_TOKEN = "<｜▁pad▁｜>"
IMAGE_TOKEN = "<image_placeholder>"
BOI_TOKEN = "<begin_of_image>"
EOI_TOKEN = "<end_of_image>"
GEN_TOKEN = "<｜begin▁of▁generation｜>"

# Order fixes the ids of a built tokenizer: the special tokens come first (ids 0..6), then the
# 256 byte symbols, then the learned merges.
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, IMAGE_TOKEN, BOI_TOKEN, EOI_TOKEN, GEN_TOKEN)
NUM_BYTE_SYMBOLS = 256


def build_tokenizer(
    corpus: Iterable[str],
    vocab_size: int,
    out_dir: str | os.PathLike | None = None,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `corpus` and save it in Hugging Face format to `out_dir`.

    The vocabulary holds the 7 special tokens (ids 0..6: bos, eos, pad, image, boi, eoi, gen), the
    256 byte symbols, and at most `vocab_size - 263` merges; so every id is below `vocab_size`
    (fewer merges are learned when the corpus has no more pairs seen `min_frequency` times, and then
    `len(tokenizer) < vocab_size`). Training is deterministic for a given corpus.

    The saved folder loads with `transformers.AutoTokenizer.from_pretrained(out_dir)`.
    """
    minimum = len(SPECIAL_TOKENS) + NUM_BYTE_SYMBOLS
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum} (7 special tokens + 256 bytes), got {vocab_size}")

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((str(text) for text in corpus), trainer=trainer)

    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        # Like the official Llama fast tokenizer: BOS before each sequence, no EOS.
        processors.TemplateProcessing(
            single=f"{BOS_TOKEN} $A",
            pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
            special_tokens=[(BOS_TOKEN, bos_id)],
        ),
    ])

    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IMAGE_TOKEN, BOI_TOKEN, EOI_TOKEN, GEN_TOKEN],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    if out_dir is not None:
        hf_tokenizer.save_pretrained(os.fspath(out_dir))
    return hf_tokenizer
