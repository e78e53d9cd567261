"""The run configuration: typed dataclasses, read from YAML with ``key=value`` overrides.

    run_dir: runs/my-sft            # checkpoints, log.csv, config.yaml (resolved), export/
    seed: 0
    model:   {path: ..., preset: ..., config: ..., tokenizer: ...}
    vae:     {path: ...}            # a diffusers AutoencoderKL folder
    stage:   sft                    # a preset name, or {preset: sft, steps: 100, ...}, or every field
    losses:  {prompt_dropout: 0.1, time_distribution: logit_normal, time_mean: 0, time_std: 1,
              repa_weight: 1.0, repa_layer: 6, repa_hidden: null,
              negative_weight: 0, negative_margin: 0.01, negative_max_t: 0.5}   # see train/losses.py
    data:    {und: [...], gen: [...], text: [...],   # .jsonl files, .tar shards, globs or folders
              packing: false, seq_len: 4096, attention: auto}  # packed rows (see train/packing.py)
    lora:    {enabled: false, r: 16, alpha: 32, ...}
    trainer: {grad_accum: 1, ema_decay: 0.99, save_every: 100, ...}

Overrides use dotted keys and YAML values: ``stage.steps=50 trainer.grad_accum=2 data.gen=[a.jsonl]``.
Unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import ConfigError
from .stages import StageConfig, stage_preset


@dataclass
class ModelSource:
    path: str | None = None  # a model folder (ours or the official layout): fine-tune it
    preset: str | None = None  # else a fresh model from a preset of janusflow.config ...
    config: str | None = None  # ... or from a config.json of ours
    tokenizer: str | None = None  # tokenizer / processor folder; default: `path`
    dtype: str = "float32"  # master weights (bf16 autocast on CUDA computes in bf16)


@dataclass
class VAEConfig:
    path: str | None = None  # diffusers AutoencoderKL folder
    tiny_random: bool = False  # a random 2-level VAE: smoke tests only


@dataclass
class LossConfig:
    prompt_dropout: float = 0.1
    time_distribution: str = "logit_normal"  # or "uniform"
    time_mean: float = 0.0
    time_std: float = 1.0
    repa_weight: float = 1.0  # 0 turns REPA off
    repa_layer: int = 6  # hidden states after LLM block k (1-based)
    repa_hidden: int | None = None  # projector width; None: the LLM width
    # the contrastive term on samples with a negative caption (losses.py; 0: off, the paper's recipe)
    negative_weight: float = 0.0
    negative_margin: float = 0.01  # m, in units of the per-sample flow MSE
    negative_max_t: float = 0.5  # the term applies where t < this (the noisy half, where layouts form)

    def validate(self) -> None:
        if not 0.0 <= self.prompt_dropout <= 1.0:
            raise ConfigError(f"losses.prompt_dropout must be in [0, 1], got {self.prompt_dropout}")
        if self.time_distribution not in ("logit_normal", "uniform"):
            raise ConfigError("losses.time_distribution must be logit_normal or uniform, "
                              f"got {self.time_distribution!r}")
        if self.time_std <= 0 or self.repa_weight < 0 or self.repa_layer < 1:
            raise ConfigError("losses: time_std must be > 0, repa_weight >= 0, repa_layer >= 1")
        if self.negative_weight < 0 or self.negative_margin <= 0 or not 0 < self.negative_max_t <= 1:
            raise ConfigError("losses: negative_weight must be >= 0, negative_margin > 0, negative_max_t in (0, 1]")


@dataclass
class DataConfig:
    und: list[str] = field(default_factory=list)
    gen: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    shuffle: bool = True  # reshuffle each finite source every epoch
    cache: str | None = None  # folder of precomputed latents / REPA features (see `cache` command)
    max_text_tokens: int = 1024
    max_skip_fraction: float = 0.5  # stop when more than this share of samples is unreadable (after 50)
    # sequence packing (packing.py): samples of every task share rows of seq_len tokens, each attending
    # only to itself; stage.batch_size then counts rows. attention: "sdpa" (a boolean block mask, the
    # reference), "flex" (FlexAttention's block-sparse kernel) or "auto" (flex on CUDA, else sdpa)
    packing: bool = False
    seq_len: int = 4096
    attention: str = "auto"

    def validate(self) -> None:
        if self.seq_len < 2:
            raise ConfigError(f"data.seq_len must be >= 2, got {self.seq_len}")
        if self.attention not in ("auto", "sdpa", "flex"):
            raise ConfigError(f"data.attention must be auto, sdpa or flex, got {self.attention!r}")
        if self.max_text_tokens < 2 or not 0 <= self.max_skip_fraction <= 1:
            raise ConfigError("data: max_text_tokens must be >= 2 and max_skip_fraction in [0, 1]")


@dataclass
class LoraSettings:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])


@dataclass
class LoopSettings:
    grad_accum: int = 1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    precision: str = "auto"
    device: str = "auto"
    distributed: str = "ddp"
    gradient_checkpointing: bool = False
    save_every: int = 100
    keep_last: int = 3
    log_every: int = 1
    data_workers: int = 0  # processes building the next steps' batches (0: the training process)
    max_seconds: float = 0.0  # end the run after this much training time (0: no limit)
    resume: bool = True
    progress: bool = True
    tensorboard: bool = False


@dataclass
class TrainConfig:
    run_dir: str = "runs/janusflow"
    seed: int = 0
    model: ModelSource = field(default_factory=ModelSource)
    vae: VAEConfig = field(default_factory=VAEConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    trainer: LoopSettings = field(default_factory=LoopSettings)

    def validate(self) -> None:
        self.stage.validate()
        self.losses.validate()
        self.data.validate()
        if self.model.path is None and self.model.preset is None and self.model.config is None:
            raise ConfigError("model: give path (a model folder), preset or config")
        if self.model.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"model.dtype must be float32 or bfloat16, got {self.model.dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def trainer_config(self):
        from .trainer import TrainerConfig

        loop = dataclasses.asdict(self.trainer)
        loop.pop("gradient_checkpointing")
        loop["betas"] = tuple(loop["betas"])
        return TrainerConfig(run_dir=self.run_dir, steps=self.stage.steps, lr=self.stage.lr,
                             warmup_steps=self.stage.warmup_steps, decay_steps=self.stage.decay_steps, **loop)


# -- reading ---------------------------------------------------------------------------------------

def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> TrainConfig:
    """YAML file (or None for defaults) + ``key=value`` overrides -> a validated TrainConfig."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except OSError as e:
            raise ConfigError(f"cannot read the config {path}: {e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    if isinstance(data.get("stage"), str):
        data["stage"] = {"preset": data["stage"]}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        if key == "stage":
            data["stage"] = {"preset": raw}
            continue
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    stage = data.get("stage") or {}
    if not isinstance(stage, dict):
        raise ConfigError("stage must be a preset name or a mapping")
    stage = dict(stage)
    if isinstance(stage.get("phases"), list):  # `ratios` reads as `ratio` in a phase
        stage["phases"] = [{("ratio" if k == "ratios" else k): v for k, v in phase.items()}
                           if isinstance(phase, dict) and "ratio" not in phase else phase for phase in stage["phases"]]
    base = stage_preset(stage.pop("preset")) if "preset" in stage else StageConfig()
    data["stage"] = {**dataclasses.asdict(base), **stage}
    config = build(TrainConfig, data, "config")
    config.validate()
    return config


def build(cls, data: Any, where: str):
    """Dataclass ``cls`` from plain data, checking keys and types by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(names)}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}")
    return cls(**{k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()})


def _coerce(kind, value, where: str):
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kind = next(a for a in args if a is not type(None))
        return _coerce(kind, value, where)
    if dataclasses.is_dataclass(kind):
        return build(kind, value, where)
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, str):
            try:
                value = float(value)  # YAML reads 1e-4 (no dot) as a string
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value
