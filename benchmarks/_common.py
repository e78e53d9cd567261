"""Shared pieces of the benchmarks: random-weight models built cheaply, synthetic prompt rows, the
machine's fp32 matmul peak, and per-task peak memory measured in a child process."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from janusflow.checkpoint import _materialize_buffers, build_meta  # noqa: E402
from janusflow.config import JanusFlowConfig  # noqa: E402
from janusflow.processor import make_uncond  # noqa: E402

BOS, PAD, GEN = 0, 2, 6  # synthetic ids (only need to be below the vocabulary size)


@torch.no_grad()
def random_model(preset: str, dtype: torch.dtype = torch.float32, seed: int = 0, device: str | torch.device = "cpu"):
    """The preset's architecture with random weights: built on the meta device, allocated once with
    ``to_empty`` on ``device``, then filled in place (N(0, 0.02) matrices, unit norms, zero biases),
    so a 1.3B model costs one copy of its weights and a few seconds, not a full ``nn.init`` pass."""
    config = JanusFlowConfig.from_name(preset)
    device = torch.device(device)
    model = build_meta(config).to_empty(device=device).to(dtype)
    g = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim == 1:
            p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
        else:
            p.normal_(0.0, 0.02, generator=g)
    _materialize_buffers(model, device)
    return model.eval()


def prompt_rows(config: JanusFlowConfig, prompt_len: int, batch: int, guided: bool, seed: int = 0):
    """(tokens, mask) for ``batch`` generation prompts of ``prompt_len`` ids (BOS ... GEN), with their
    unconditional rows (make_uncond) when guided."""
    g = torch.Generator().manual_seed(seed)
    body = torch.randint(10, config.language.vocab_size, (batch, prompt_len - 2), generator=g)
    tokens = torch.cat([torch.full((batch, 1), BOS), body, torch.full((batch, 1), GEN)], dim=1)
    mask = torch.ones_like(tokens)
    if guided:
        uncond, uncond_mask = make_uncond(tokens, mask, PAD)
        tokens, mask = torch.cat([tokens, uncond]), torch.cat([mask, uncond_mask])
    return tokens, mask


def matmul_peak(size: int = 4096, repeats: int = 5) -> tuple[float, float]:
    """Best fp32 FLOP/s of ``torch.mm`` on (size x size) @ (size x size) on this machine, now:
    (per wall-clock second, per CPU second of this process)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    wall, cpu = timed(lambda: torch.mm(a, b), repeats=repeats, warmup=0)
    return 2 * size**3 / min(wall), 2 * size**3 / min(cpu)


def timed(fn, repeats: int = 3, warmup: int = 1) -> tuple[list[float], list[float]]:
    """(wall-clock seconds, CPU seconds of this process) of each call. On a shared machine the CPU
    time excludes the time other processes held the cores (exact for one thread)."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return wall, cpu


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_child(script: Path, args: list[str]) -> dict:
    """Run ``script --child ARGS`` in a fresh interpreter; its last stdout line is a JSON result."""
    done = subprocess.run([sys.executable, str(script), "--child", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{script.name} {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    load = os.getloadavg()
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, load average {load[0]:.1f}")


def parse_args(parser, threads_default=None):
    """``parser``'s arguments plus ``--threads``, applied (torch threads) before the benchmark runs."""
    parser.add_argument("--threads", type=int, default=threads_default,
                        help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args
