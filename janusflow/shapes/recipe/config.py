"""The recipe as a typed config: ``configs/recipe/shapes.yaml`` and its presets.

    seed: 0                      # every stage's seed derives from it (stage_seed)
    model:    {parts: default, vocab_size: 512, gen_channels: 128, gen_layers: 2}
    parts:    {corpus_scenes: 2000, eval_scenes: 256, final_eval_scenes: 1000, scale_scenes: 1024}
    training: {repa_weight: 1.0, ...}      # unified.TrainingSettings: the JanusFlow stages' data and losses
    stages:                                # in order; names are free, kinds fixed
      vae:       {kind: vae, steps: 2000, segment: 1000, batch_size: 128, lr: 1.0e-3, target: 0.995}
      tokenizer: {kind: tokenizer}
      siglip:    {kind: siglip, ...}
      lm:        {kind: lm, ...}
      adapt:     {kind: janusflow, phase: adaptation, start: parts, steps: 500, batch_size: 256, lr: 1.0e-3}
      sft:       {kind: janusflow, phase: sft, start: adapt, ..., training: {negative_weight: 5}}
      soup:      {kind: soup, models: [sft_a, sft_b], weights: [1, 1]}
    evaluation: {prompts: 50, images: 4, questions: 1000, seed: 0, candidates: [4, 1], latency_repeats: 5}

Two stages always follow the listed ones: ``assemble`` (the last model-making stage's weights in fp16,
the shipped folder's layout) and ``eval`` (``janusflow eval shapes`` of it, once per entry of
``evaluation.candidates``). A file may start from another with ``base: other.yaml`` (a path relative
to it): mappings merge key by key, anything else is replaced, so an ablation names only what it
changes. ``key.sub=value`` overrides (YAML values) apply last. Unknown keys and wrong types are
errors that name the key (``janusflow.train.config.build``).
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...config import UND_ENCODERS
from ...errors import ConfigError
from ...train.config import build
from .unified import TrainingSettings

PART_KINDS = ("vae", "tokenizer", "siglip", "lm")  # each once, each before the JanusFlow stages
TRAINED_KINDS = ("vae", "siglip", "lm", "janusflow")
KINDS = (*PART_KINDS, "janusflow", "soup")
FINAL_STAGES = ("assemble", "eval")
PHASES = ("adaptation", "pretrain", "sft")  # janusflow.train.stages presets: what trains, the task mix
PARTS = "parts"  # a janusflow stage's start: the parts put together (new modules freshly initialised)
REPO_CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "recipe"  # the repository's recipes


@dataclass
class StageSpec:
    """One stage. Trained kinds use the loop fields; ``janusflow`` also ``phase``, ``start`` and
    ``training``; ``soup`` uses ``models`` and ``weights``."""

    kind: str
    steps: int = 0  # step budget
    segment: int = 0  # steps between evaluations of the EMA and raw exports (0: one, at the end)
    batch_size: int = 0
    lr: float = 0.0
    warmup_steps: int = 100
    decay_steps: int = 0  # the last decay_steps of `steps` cool the rate linearly to 0
    ema_decay: float = 0.999
    save_every: int = 100
    target: float = 1.0  # parts: the stage ends early once its key metric reaches this ...
    min_steps: int = 0  # ... but not before this step
    phase: str = ""  # janusflow: adaptation | pretrain | sft
    start: str = ""  # janusflow: "parts" or an earlier janusflow / soup stage
    carry_repa: bool = True  # janusflow: start REPA's projector where `start` left it
    training: dict[str, Any] = field(default_factory=dict)  # janusflow: entries replacing the recipe's `training`
    models: list[str] = field(default_factory=list)  # soup: earlier janusflow / soup stages
    weights: list[float] = field(default_factory=list)  # soup: one a model (empty: equal)


@dataclass
class ModelSizes:
    parts: str = "default"  # the VAE, SigLIP and LM sizes: "default" (the shipped model's) or "tiny" (tests)
    vocab_size: int = 512  # asked of the tokenizer; it stops when no merge is seen twice (470 on the world)
    gen_channels: int = 128  # generation encoder width (= decoder input width)
    gen_layers: int = 2  # ConvNeXt blocks in the generation encoder and in the decoder
    # what reads images for understanding: "siglip" (decoupled, the paper's) or "generation" (one shared
    # encoder: the VAE + the generation encoder, configs/ablations/shared.yaml); recorded only when not siglip
    und_encoder: str = "siglip"


@dataclass
class PartsSettings:
    corpus_scenes: int = 2000  # the tokenizer's corpus: every question and answer of this many scenes
    eval_scenes: int = 256  # each evaluation while a part trains
    final_eval_scenes: int = 1000  # the VAE as kept (fp16), on other fresh scenes
    scale_scenes: int = 1024  # fresh scenes measuring the VAE's latent std (its scaling factor)


@dataclass
class Evaluation:
    """The final ``janusflow eval shapes`` of the assembled model."""

    prompts: int = 50  # a category
    images: int = 4  # a prompt
    questions: int = 1000
    seed: int = 0  # the evaluation's own seed, the same for every recipe seed
    candidates: list[int] = field(default_factory=lambda: [4, 1])  # one evaluation each; 4: the default
    latency_repeats: int = 5  # one image / one answer alone, timed this many times (0: not timed)


@dataclass
class RecipeConfig:
    seed: int = 0
    model: ModelSizes = field(default_factory=ModelSizes)
    parts: PartsSettings = field(default_factory=PartsSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    stages: dict[str, StageSpec] = field(default_factory=dict)
    evaluation: Evaluation = field(default_factory=Evaluation)

    @property
    def order(self) -> list[str]:
        return [*self.stages, *FINAL_STAGES]

    def stage_training(self, name: str) -> TrainingSettings:
        """The recipe's ``training`` with the stage's own entries in place."""
        merged = {**dataclasses.asdict(self.training), **self.stages[name].training}
        return build(TrainingSettings, merged, f"stages.{name}.training")

    def model_stage(self) -> str:
        """The stage whose weights are assembled: the last janusflow or soup stage."""
        return [n for n, s in self.stages.items() if s.kind in ("janusflow", "soup")][-1]

    def needs(self, name: str) -> list[str]:
        """The stages whose results ``name`` reads."""
        if name == "eval":
            return ["assemble"]
        if name == "assemble":
            return [self.model_stage()]
        spec = self.stages[name]
        if spec.kind in ("siglip", "lm"):
            return ["tokenizer"]
        if spec.kind == "janusflow":
            return list(self._parts().values()) if spec.start == PARTS else [spec.start]
        if spec.kind == "soup":
            return list(spec.models)
        return []

    def _parts(self) -> dict[str, str]:
        return {s.kind: n for n, s in self.stages.items() if s.kind in PART_KINDS}

    def validate(self) -> None:
        if self.model.parts not in ("default", "tiny"):
            raise ConfigError(f"model.parts must be default or tiny, got {self.model.parts!r}")
        if self.model.und_encoder not in UND_ENCODERS:
            raise ConfigError(f"model.und_encoder must be one of {UND_ENCODERS}, got {self.model.und_encoder!r}")
        if not self.stages:
            raise ConfigError("stages: the recipe lists no stage")
        seen: list[str] = []
        for name, s in self.stages.items():
            where = f"stages.{name}"
            if name in (*FINAL_STAGES, PARTS, "init") or not name.replace("_", "").replace("-", "").isalnum():
                raise ConfigError(f"{where}: a stage name is letters, digits, - and _, and not {FINAL_STAGES}, parts or init")
            if s.kind not in KINDS:
                raise ConfigError(f"{where}.kind must be one of {KINDS}, got {s.kind!r}")
            if s.kind in PART_KINDS and any(self.stages[p].kind == s.kind for p in seen):
                raise ConfigError(f"{where}: a second {s.kind} stage; each part is built once")
            if s.kind in PART_KINDS and any(self.stages[p].kind in ("janusflow", "soup") for p in seen):
                raise ConfigError(f"{where}: the parts come before the JanusFlow stages")
            if s.kind in TRAINED_KINDS:
                if s.steps < 1 or s.batch_size < 1 or not s.lr > 0 or s.segment < 0 or s.save_every < 1:
                    raise ConfigError(f"{where}: steps, batch_size and save_every must be >= 1, lr > 0, segment >= 0")
                if not 0 <= s.decay_steps <= s.steps or s.warmup_steps < 0 or not 0 <= s.ema_decay < 1:
                    raise ConfigError(f"{where}: decay_steps in 0..steps, warmup_steps >= 0, ema_decay in [0, 1)")
            if s.kind == "janusflow":
                if s.phase not in PHASES:
                    raise ConfigError(f"{where}.phase must be one of {PHASES}, got {s.phase!r}")
                if s.start != PARTS and (s.start not in seen or self.stages[s.start].kind not in ("janusflow", "soup")):
                    raise ConfigError(f"{where}.start must be {PARTS!r} or an earlier janusflow or soup stage, "
                                      f"got {s.start!r}")
                if s.start == PARTS and set(self._parts()) != set(PART_KINDS):
                    raise ConfigError(f"{where}: starting from the parts needs a stage of each kind {PART_KINDS}")
                self.stage_training(name)  # its entries must be settings, of their types
            elif s.training or s.phase or s.start:
                raise ConfigError(f"{where}: phase, start and training belong to janusflow stages")
            if s.kind == "soup":
                bad = [m for m in s.models if m not in seen or self.stages[m].kind not in ("janusflow", "soup")]
                if len(s.models) < 2 or bad or len(set(s.models)) != len(s.models):
                    raise ConfigError(f"{where}.models: two or more different earlier janusflow or soup stages, "
                                      f"got {s.models}")
                if s.weights and (len(s.weights) != len(s.models) or any(not w > 0 for w in s.weights)):
                    raise ConfigError(f"{where}.weights: one positive weight a model, got {s.weights}")
            elif s.models or s.weights:
                raise ConfigError(f"{where}: models and weights belong to soup stages")
            seen.append(name)
        if not any(s.kind in ("janusflow", "soup") for s in self.stages.values()):
            raise ConfigError("stages: no janusflow or soup stage makes a model to assemble")
        e = self.evaluation
        if min(e.prompts, e.images, e.questions) < 1 or not e.candidates or min(e.candidates) < 1:
            raise ConfigError("evaluation: prompts, images, questions and every candidates entry must be >= 1")
        if e.latency_repeats < 0:
            raise ConfigError("evaluation.latency_repeats must be >= 0")
        p = self.parts
        if min(p.corpus_scenes, p.eval_scenes, p.final_eval_scenes, p.scale_scenes) < 1:
            raise ConfigError("parts: corpus_scenes, eval_scenes, final_eval_scenes and scale_scenes must be >= 1")


def stage_seed(seed: int, stage: str) -> int:
    """A stage's seed: a pure function of the recipe's seed and the stage's name (its data, its new
    modules' initialisation), so adding a stage changes no other stage's draws."""
    return (seed * 1_000_003 + zlib.crc32(stage.encode())) % (2**31 - 1)


# -- reading ----------------------------------------------------------------------------------------


def read_yaml(path: str | os.PathLike, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping of a YAML file with its ``base:`` chain merged in (the file's own keys win)."""
    path = Path(os.fspath(path)).resolve()
    if path in chain:
        raise ConfigError(f"{path}: base: files include each other")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"cannot read the recipe config {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a file name")
    return merge(read_yaml(path.parent / base, (*chain, path)), data)


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes``: mappings merge key by key, other values are replaced."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``key.sub=value`` items (YAML values) written into ``data``."""
    data = merge({}, data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected key.sub=value, e.g. stages.unified.steps=3000")
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
        try:
            node[last] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
    return data


def from_data(data: dict[str, Any]) -> RecipeConfig:
    """A validated RecipeConfig of plain data (a read YAML, or config.yaml of a run folder)."""
    stages = data.get("stages")
    if not isinstance(stages, dict):
        raise ConfigError("stages: expected a mapping of stage names to stages")
    for name, spec in stages.items():
        if not isinstance(spec, dict) or "kind" not in spec:
            raise ConfigError(f"stages.{name}: expected a mapping with a kind")
    config = build(RecipeConfig, data, "recipe")
    config.stages = {str(k): v for k, v in config.stages.items()}
    config.validate()
    return config


def load_recipe(path: str | os.PathLike, overrides: list[str] = ()) -> RecipeConfig:
    return from_data(apply_overrides(read_yaml(path), list(overrides)))


def to_data(config: RecipeConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    if data["model"]["und_encoder"] == "siglip":  # the default: run folders started before read the same
        del data["model"]["und_encoder"]
    return data
