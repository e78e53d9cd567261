"""The training section of bench_gpu.py: the project's trainer step, FSDP on one device, activation
checkpointing, full fine-tuning and LoRA.

What runs is the trainer's own step (``Trainer._train_step``: the loss contract's totals, the move to
the device and ``task.on_device``, bf16 autocast, backward, clipping, AdamW) on ``JanusFlowTask``
micro-batches of the SFT stage's mix (und : gen : text = 21 : 70 : 9, REPA on) built from the toy
data before the clock starts (in a real run data workers build them, see BENCHMARKS.md section 5).
The model is the preset's with random fp32 master weights; every transformer block and the root are
wrapped with FSDP2 ``fully_shard`` in a process group of one (bf16 parameters for compute, fp32
gradient reduction), the LLM's and SigLIP's blocks recompute their activations in backward.
Generation images become latents through a fixed random projection (``ProjectionLatents``), a
stand-in for the VAE, which real runs take from the latent cache (and which is not the model's work).

Model FLOPs: ``FlopCounterMode`` over one forward and backward of a timed micro-batch with the
checkpointing switched off (so the recomputation is not counted: MFU, not hardware utilisation);
MFU = model FLOPs per step / step time / ``--peak-tflops``. Peak memory: the CUDA allocator's
``max_memory_allocated`` (and ``max_memory_reserved``) over the timed steps, from a reset before the
model was built.
"""

from __future__ import annotations

import gc
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import random_model


class ProjectionLatents:
    """Pixels (B, 3, P, P) -> latents (B, C, P/8, P/8): 8x8 patches through a fixed random linear map."""

    downsample = 8

    def __init__(self, latent_channels: int, latent_size: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.latent_channels, self.image_size = latent_channels, latent_size * self.downsample
        self.weight = torch.randn(latent_channels, 3 * self.downsample**2, generator=g) / self.downsample

    def to(self, device) -> "ProjectionLatents":
        self.weight = self.weight.to(device)
        return self

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = F.pixel_unshuffle(pixels.float(), self.downsample)  # (B, 3*64, P/8, P/8)
        return torch.einsum("oc,bchw->bohw", self.weight.to(patches.device), patches)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_group(device: torch.device) -> None:
    """A process group of one (FSDP needs one), over TCP on the loopback interface."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)


def shard(objective: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """FSDP2 on every transformer block and the root (``janusflow.train.distributed.wrap``'s layout),
    bf16 compute and fp32 gradient reduction on CUDA."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if device.type == "cuda" else MixedPrecisionPolicy())
    for sub in objective.modules():
        if type(sub).__name__.endswith(("DecoderLayer", "EncoderLayer")):
            fully_shard(sub, mp_policy=policy)
    fully_shard(objective, mp_policy=policy)
    return objective


def set_checkpointing(model, on: bool) -> None:
    for part in (model.language_model, model.und_encoder.siglip):
        if on:
            if hasattr(part, "activation_checkpointing_enable"):
                part.activation_checkpointing_enable({"use_reentrant": False})
            else:
                part.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif hasattr(part, "activation_checkpointing_disable"):
            part.activation_checkpointing_disable()
        else:
            part.gradient_checkpointing_disable()


def build_task(args, device, lora: bool, data: dict, run_dir: Path):
    from janusflow.processor import JanusFlowProcessor
    from janusflow.train.config import load_config
    from janusflow.train.task import JanusFlowTask

    model = random_model(args.preset, torch.float32, device=device).train()
    mcfg = model.config
    overrides = [f"run_dir={run_dir}", f"model.preset={args.preset}", f"model.tokenizer={data['tokenizer']}",
                 "stage=sft", f"stage.batch_size={args.train_batch}", f"stage.steps={args.train_steps + 2}",
                 f"data.und=[{data['und']}]", f"data.gen=[{data['gen']}]", f"data.text=[{data['text']}]",
                 f"losses.repa_layer={min(6, mcfg.language.num_hidden_layers)}", "trainer.gradient_checkpointing=true",
                 "trainer.distributed=fsdp", "trainer.progress=false", "trainer.ema_decay=0",
                 f"trainer.device={device.type}", f"lora.enabled={'true' if lora else 'false'}"]
    config = load_config(None, overrides)
    processor = JanusFlowProcessor.from_pretrained(  # as janusflow.train.task.build_model makes it
        data["tokenizer"], image_size=mcfg.und_vision.image_size, num_image_tokens=mcfg.num_und_image_tokens,
        num_gen_image_tokens=mcfg.num_image_tokens, max_length=mcfg.language.max_position_embeddings)
    encoder = ProjectionLatents(mcfg.gen_vision.latent_channels, mcfg.gen_vision.latent_size)
    return JanusFlowTask(config, model=model, processor=processor, latent_encoder=encoder), config


def train_run(args, device, lora: bool, data: dict, run_dir: Path, peak_flops: float) -> dict:
    from janusflow.train.distributed import Dist
    from janusflow.train.trainer import Shard, Trainer, _adamw_kernel, _Objective

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start_memory = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    task, config = build_task(args, device, lora, data, run_dir)
    ctx = Dist(0, 1, 0, device)
    task.setup(ctx)
    module = task.module.to(device)
    trainable = task.trainable_parameters()
    for name, p in module.named_parameters():
        p.requires_grad_(name in trainable)
    n_trainable = sum(p.numel() for p in trainable.values())
    wrapped = shard(_Objective(module, trainable), device)
    trainable = {n: p for n, p in module.named_parameters() if n in trainable}  # FSDP swapped them
    trainer = Trainer(task, config.trainer_config())
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=1e-5, betas=(0.9, 0.95),
                                  **_adamw_kernel(trainable.values(), device))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    autocast = trainer._autocast(device)
    layout = Shard(0, 1, 1)
    steps = [task.cpu_micro_batches(s, layout) for s in range(args.train_steps + 2)]  # built before the clock
    tokens = [sum(task.counts(b)["tokens"] for b in micro) for micro in steps]
    module.train()

    def run(step: int):
        return trainer._train_step(steps[step], wrapped, layout, ctx, autocast, optimizer, scheduler, trainable)

    for s in range(2):  # warm-up: allocator, cuBLAS, AdamW state
        run(s)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for s in range(2, args.train_steps + 2):
        logs, _ = run(s)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    step_s = (time.perf_counter() - start) / args.train_steps
    row = {"run": "LoRA (r=16, LLM linears; other modules full)" if lora else "full fine-tuning",
           "rows": args.train_batch, "tokens_per_step": sum(tokens[2:]) / args.train_steps, "step_s": step_s,
           "trainable_params": n_trainable, "loss": logs.get("loss")}
    row["tokens_per_s"] = row["tokens_per_step"] / step_s
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        row["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
        row["memory_before_gib"] = start_memory / 2**30  # left over from an earlier run (should be ~0)
    row.update(count_flops(task, wrapped, steps[2:], layout, autocast, device, step_s, peak_flops))
    del wrapped, optimizer, scheduler, task, module, trainable, steps
    gc.collect()
    return row


def count_flops(task, wrapped, steps, layout, autocast, device, step_s, peak_flops) -> dict:
    """Model FLOPs of the timed steps' mean (forward + backward, no recomputation) and the MFU."""
    from torch.utils.flop_counter import FlopCounterMode

    from janusflow.train.trainer import to_device

    set_checkpointing(task.model, False)
    try:
        micro = steps[0]  # one step's batches (FLOPs of the other steps scale with their tokens)
        totals = {}
        for b in micro:
            for k, v in task.counts(b).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        flops = 0
        for b in micro:
            b = task.on_device(to_device(b, device))
            with FlopCounterMode(display=False) as counter, autocast:
                loss, _ = wrapped(b, totals)
                loss.backward()
            flops += counter.get_total_flops()
        for p in task.module.parameters():
            p.grad = None
    except torch.cuda.OutOfMemoryError as e:
        return {"flops_note": f"FLOP count without checkpointing ran out of memory ({str(e)[:100]})"}
    finally:
        set_checkpointing(task.model, True)
    step_tokens = sum(task.counts(b)["tokens"] for b in steps[0])
    mean_tokens = sum(sum(task.counts(b)["tokens"] for b in m) for m in steps) / len(steps)
    per_step = flops * mean_tokens / step_tokens
    return {"model_tflop_per_step": per_step / 1e12, "achieved_tflops": per_step / step_s / 1e12,
            "mfu": per_step / step_s / peak_flops}


def bench_training(args, device, record, notes) -> None:
    from janusflow.config import JanusFlowConfig
    from janusflow.train.toydata import write_toy_data

    from _common import matmul_peak

    if device.type == "cuda":
        peak = (args.peak_tflops or 989.0) * 1e12
        notes["peak"] = f"{peak / 1e12:.0f} TFLOP/s dense bf16 (--peak-tflops; 989 is the H100/H200 SXM spec sheet's)"
    else:
        peak = args.peak_tflops * 1e12 if args.peak_tflops else matmul_peak(1024, 3)[0]
        notes["peak"] = f"{peak / 1e12:.3f} TFLOP/s (fp32 torch.mm 1024^2 measured now)"
    process_group(device)
    compute = "bf16 compute (FSDP param_dtype and autocast)" if device.type == "cuda" else "fp32 compute"
    notes["setup"] = ("FSDP2 fully_shard per block + root, world size 1 (process group over tcp://127.0.0.1); "
                      f"activation checkpointing on the LLM and SigLIP blocks; {compute}, fp32 master weights "
                      f"and AdamW state; SFT stage mix und:gen:text 21:70:9 with REPA, {args.train_batch} samples "
                      "a step; no EMA")
    with tempfile.TemporaryDirectory() as tmp:
        vocab = min(1024, JanusFlowConfig.from_name(args.preset).language.vocab_size)
        data = write_toy_data(Path(tmp) / "data", count=64, vocab_size=vocab)
        for run in args.train_runs:
            row = train_run(args, device, run == "lora", data, Path(tmp) / f"run-{run}", peak)
            print(f"  training {row['run']}: {row['step_s']:.3f} s a step, {row['tokens_per_s']:,.0f} tokens/s, "
                  f"MFU {row.get('mfu', float('nan')):.1%}, peak memory {row.get('peak_memory_gib', float('nan')):.1f} GiB",
                  flush=True)
            record(row)
            if device.type == "cuda":
                torch.cuda.empty_cache()
