"""Training tokens/s with sequence packing against padded batches, on a realistic mix of lengths.

    python benchmarks/bench_packing.py --preset small --seq-len 512 --rows 8 --samples 32 --steps 6 --threads 1
    python benchmarks/bench_packing.py --device cuda --modes padded,packed-sdpa,packed-flex ...   # on a GPU

Both runs train the same model (random weights of the preset) on the same stream of samples, the
paper's stage 2 (unified pre-training: und : gen : text = 14 : 80 : 6, everything but the
understanding encoder trains), in alternating steps so that a change in the machine's load hits
both alike:
  padded: ``--samples`` samples a step, each task's rows left-padded to its longest (janusflow's
          unpacked path);
  packed: ``--rows`` rows of ``--seq-len`` tokens a step (``data.packing``), through SDPA's dense block
          mask (``packed-sdpa``) or FlexAttention (``packed-flex``, block-sparse; CUDA, compiled).
Lengths vary as real data does: captions of 5-60 words (short alt texts to dense descriptions),
conversations of 1-3 turns with answers of 3-120 words, text documents of 20-600 words; the
tokenizer is a 1,000-token BPE trained on the same words. A step's time covers what the device
does (the images to float, the VAE, forward, backward, clipping, AdamW); its batches are built
beforehand. tokens/s counts real tokens (padding excluded), so the ratio is the speed-up packing
gives per unit of data; "fill" is real tokens over the tokens the model computed on.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from PIL import Image

from _common import machine, parse_args, random_model
from janusflow.processor import JanusFlowProcessor
from janusflow.tokenizer_build import IMAGE_TOKEN, build_tokenizer
from janusflow.train import Shard
from janusflow.train.config import load_config
from janusflow.train.packed_attention import use_flex_attention
from janusflow.train.samples import CaptionSample, ConversationSample, TextSample
from janusflow.train.task import JanusFlowTask, build_latent_encoder
from janusflow.train.trainer import _adamw_kernel, to_device

WORDS = ("a an the red green blue yellow purple orange black white small large tiny huge round square circle "
         "triangle star cat dog bird tree house car road river mountain sky cloud sun moon light dark bright "
         "soft hard old young happy quiet loud left right above below near far behind front inside outside "
         "with without on under over between sits stands runs flies looks shows holds has is are was were "
         "picture image photo scene view detail colour shape texture pattern surface corner edge centre side "
         "morning evening night winter summer city forest beach field garden street window door table chair "
         "and or but because while then there here this that these those one two three four five many few").split()


def words(rng: random.Random, low: int, high: int) -> str:
    """Between low and high words, log-uniformly: many short ones, a long tail."""
    n = int(round(low * (high / low) ** rng.random()))
    return " ".join(rng.choice(WORDS) for _ in range(n))


def image(rng: random.Random) -> Image.Image:
    return Image.new("RGB", (48, 40), tuple(rng.randrange(256) for _ in range(3)))


def sources(seed: int):
    def gen(i):
        rng = random.Random(f"{seed}-gen-{i}")
        return CaptionSample(words(rng, 5, 60), image(rng))

    def und(i):
        rng = random.Random(f"{seed}-und-{i}")
        messages = []
        for turn in range(rng.randint(1, 3)):
            question = words(rng, 4, 20)
            messages += [{"role": "User", "content": (IMAGE_TOKEN + "\n" if turn == 0 else "") + question},
                         {"role": "Assistant", "content": words(rng, 3, 120)}]
        return ConversationSample(messages, [image(rng)])

    def text(i):
        return TextSample(words(random.Random(f"{seed}-text-{i}"), 20, 600))

    return {"gen": gen, "und": und, "text": text}


def computed_tokens(batch, num_image_tokens: int) -> int:
    """Tokens the LLM runs on (padding included): rows x width of every part."""
    if batch.packed is not None:
        return batch.packed.input_ids.numel()
    total = sum(p.input_ids.numel() for p in (batch.und, batch.text) if p is not None)
    if batch.gen is not None:
        rows, width = batch.gen.input_ids.shape
        total += rows * (width + num_image_tokens)  # [prompt[:-1], t_emb, N tokens] per row
    return total


def build(args, tmp: str):
    """The model (random weights of the preset), the processor, a VAE and one task per batching mode."""
    rng = random.Random(0)
    corpus = [words(rng, 20, 200) for _ in range(400)] + [
        "You are a helpful language and vision assistant. User: Assistant:"] * 20
    build_tokenizer(corpus, vocab_size=1000, out_dir=Path(tmp) / "tokenizer")
    base = [f"run_dir={tmp}/run", f"model.preset={args.preset}", f"model.tokenizer={tmp}/tokenizer",
            "vae.tiny_random=true", "stage=pretrain", "stage.phases=[]", f"losses.repa_layer={args.repa_layer}",
            f"data.max_text_tokens={args.seq_len}", "trainer.progress=false"]  # the same text in both
    configs = {"padded": load_config(None, base + [f"stage.batch_size={args.samples}"])}
    for mode in args.modes:
        if mode.startswith("packed"):
            configs[mode] = load_config(None, base + [f"stage.batch_size={args.rows}", "data.packing=true",
                                                      f"data.seq_len={args.seq_len}"])
    model = random_model(args.preset)
    mcfg = model.config
    processor = JanusFlowProcessor.from_pretrained(
        f"{tmp}/tokenizer", image_size=mcfg.und_vision.image_size, num_image_tokens=mcfg.num_und_image_tokens,
        num_gen_image_tokens=mcfg.num_image_tokens, max_length=mcfg.language.max_position_embeddings)
    encoder = build_latent_encoder(configs["padded"], model)
    tasks = {mode: JanusFlowTask(configs[mode], model=model, processor=processor, latent_encoder=encoder,
                                 sources=sources(0)) for mode in args.modes}
    for task in tasks.values():  # one REPA projector, trained by every mode
        task.module.repa_head = tasks["padded"].module.repa_head
    return model, encoder, tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--rows", type=int, default=8, help="packed rows a step")
    parser.add_argument("--samples", type=int, default=32, help="samples a padded step")
    parser.add_argument("--steps", type=int, default=6, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repa-layer", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default="padded,packed-sdpa",
                        help="comma-separated: padded, packed-sdpa, packed-flex (FlexAttention)")
    args = parse_args(parser)
    args.modes = args.modes.split(",")
    if "padded" not in args.modes or not set(args.modes) <= {"padded", "packed-sdpa", "packed-flex"}:
        parser.error("--modes: padded (the baseline) and any of packed-sdpa, packed-flex")
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        model, encoder, tasks = build(args, tmp)
        shard = Shard(0, 1, 1)
        steps = args.warmup + args.steps
        batches = {mode: [task.micro_batches(s, shard) for s in range(steps)] for mode, task in tasks.items()}
        trainable = tasks["padded"].trainable_parameters()
        module = tasks["padded"].module.to(device)
        for task in tasks.values():
            task.module.to(device)
            task.device = device
        encoder.to(device)
        params = [p for n, p in module.named_parameters() if n in trainable]
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), **_adamw_kernel(params, device))
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
        wall = {mode: 0.0 for mode in tasks}
        model_time = {mode: 0.0 for mode in tasks}  # forward and backward only
        cpu = {mode: 0.0 for mode in tasks}
        real = {mode: 0.0 for mode in tasks}
        computed = {mode: 0.0 for mode in tasks}
        samples = {mode: 0.0 for mode in tasks}
        model.train()
        # padded and packed-sdpa steps alternate (a change in the machine's load hits both alike); the
        # FlexAttention steps follow as a block, as the attention implementation is the model's setting
        order = [(step, mode) for step in range(steps) for mode in tasks if mode != "packed-flex"]
        order += [(step, "packed-flex") for step in range(steps) if "packed-flex" in tasks]
        for step, mode in order:
            task = tasks[mode]
            if mode == "packed-flex" and step == 0:
                use_flex_attention(model.language_model)
            micro = batches[mode][step]
            if device.type == "cuda":
                torch.cuda.synchronize()
            started, started_cpu = time.perf_counter(), time.process_time()
            totals: dict[str, float] = {}
            for batch in micro:
                for k, v in task.counts(batch).items():
                    totals[k] = totals.get(k, 0.0) + v
            for batch in micro:
                with autocast:
                    loss, _ = task.module(task.on_device(to_device(batch, device)), totals)
                loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            model_done = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= args.warmup:
                wall[mode] += time.perf_counter() - started
                model_time[mode] += model_done - started
                cpu[mode] += time.process_time() - started_cpu
                real[mode] += totals["tokens"]
                samples[mode] += totals["samples"]
                computed[mode] += sum(computed_tokens(b, model.config.num_image_tokens) for b in micro)

    print(f"# {machine()}" + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""))
    print(f"# preset {args.preset} on {device.type}, stage 2 mix 14:80:6; padded: {args.samples} samples a step; "
          f"packed: {args.rows} rows of {args.seq_len}; {args.steps} timed steps each after {args.warmup}")
    per_cpu = device.type == "cpu"
    print("| batches | real tokens / step | samples / step | fill | s / step | of which forward + backward "
          "| tokens/s |" + (" tokens per CPU s |" if per_cpu else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if per_cpu else ""))
    for mode in tasks:
        n = args.steps
        print(f"| {mode} | {real[mode] / n:,.0f} | {samples[mode] / n:.1f} | {real[mode] / computed[mode]:.0%} | "
              f"{wall[mode] / n:.3f} | {model_time[mode] / n:.3f} | {real[mode] / wall[mode]:,.0f} |"
              + (f" {real[mode] / cpu[mode]:,.0f} |" if per_cpu else ""))
    print()
    for mode in tasks:
        if mode != "padded":
            ratio = (real[mode] / wall[mode]) / (real["padded"] / wall["padded"])
            line = f"{mode} / padded tokens/s: {ratio:.2f}x"
            if per_cpu:
                line += f" (per CPU second: {(real[mode] / cpu[mode]) / (real['padded'] / cpu['padded']):.2f}x)"
            print(line)


if __name__ == "__main__":
    main()
