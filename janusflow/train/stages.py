"""Training stages as config: what trains, how fast, how long, on which task mix, in which prompt format.

The paper's three stages (JanusFlow, Ma et al., arXiv 2411.07975 **v2**; Sec. 3.3 for the stages,
Table 1 for their hyper-parameters):
1. ``adaptation``: only the randomly initialised parts train (the aligners, the begin-of-image
   embedding, the generation encoder and decoder); LLM and understanding encoder frozen.
   und : gen : text = 50 : 50 : 0.
2. ``pretrain`` (unified pre-training): everything but the understanding encoder. 390,000 steps
   (v2's Table 1; v1 said 380,000), opening with 10,000 steps of 30 : 50 : 20 (Sec. 4.1, "In the
   initial 10,000 steps of Stage 2 ...") before 14 : 80 : 6.
3. ``sft`` (supervised fine-tuning): everything. 21 : 70 : 9.
Generation prompts: stages 1 and 2 format every data point as "<prompt><image>" (``plain``: BOS, the
caption, the generation tag), SFT uses the chat template (``chat``: "User: {prompt}\n\nAssistant:"
and the tag, the inference processor's format); ``prompt_format`` picks one per stage, and the
unconditional rows of prompt dropout are built from the rows in that format (``make_uncond``).
The learning rates, warm-up, step counts and batch sizes of the full-size presets are the paper's
(a batch counts packed rows of ``data.seq_len`` = 4,096 tokens there: see docs/training.md); the
``-small`` presets scale them down for small models on one machine (e.g. the shapes world).
``trainable`` lists module-name prefixes of ``JanusFlowModel`` (matched at dots: ``gen_dec_aligner``
does not match ``gen_dec_aligner_norm``); ``[""]`` means every module. The REPA projector always
trains when REPA is on; with LoRA, the LLM trains only through its adapters.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import ConfigError

NEW_MODULES = ["und_aligner", "boi_embedding", "gen_encoder", "gen_enc_aligner", "gen_decoder",
               "gen_dec_aligner_norm", "gen_dec_aligner"]
ALL_BUT_UND_ENCODER = NEW_MODULES + ["language_model"]
MODULES = ["und_encoder", *ALL_BUT_UND_ENCODER]  # every top-level module of JanusFlowModel
PROMPT_FORMATS = ("plain", "chat")
TASK_NAMES = ("und", "gen", "text")


@dataclass
class RatioPhase:
    """A task mix for the stage's steps before ``until_step`` (0-based), after the previous phase's."""

    until_step: int
    ratio: dict[str, float]  # shares (30 : 50 : 20 or 0.3 : 0.5 : 0.2), as integers once read

    def validate(self, where: str) -> None:
        _check_ratio(self.ratio, f"{where}.ratio", numbers=True)


@dataclass
class StageConfig:
    name: str = "custom"
    trainable: list[str] = field(default_factory=lambda: [""])
    lr: float = 1e-4
    warmup_steps: int = 0
    steps: int = 100
    batch_size: int = 8  # per optimizer step over all processes and accumulation steps: samples, or with
    #                      data.packing rows of data.seq_len tokens (the paper's reading)
    ratio: dict[str, int] = field(default_factory=lambda: {"und": 1, "gen": 1, "text": 0})
    decay_steps: int = 0  # a linear cool-down of the lr to 0 over the last decay_steps (0: constant, the paper's)
    phases: list[RatioPhase] = field(default_factory=list)  # opening mixes before `ratio` (mixture.py)
    prompt_format: str = "chat"  # generation prompts: "plain" (the prompt alone) or "chat" (the template)

    def validate(self, where: str = "stage") -> None:
        if self.lr <= 0 or self.steps < 0 or self.warmup_steps < 0 or self.batch_size < 1:
            raise ConfigError(f"{where}: lr must be > 0, steps and warmup_steps >= 0, batch_size >= 1")
        if not 0 <= self.decay_steps <= self.steps:
            raise ConfigError(f"{where}.decay_steps must be in 0..steps ({self.steps}), got {self.decay_steps}")
        # a misspelt prefix would silently freeze what it was meant to train
        bad = [p for p in self.trainable if p and (p.split(".")[0] not in MODULES or not all(p.split(".")))]
        if bad:
            raise ConfigError(f"{where}.trainable: unknown module(s) {bad}; the modules are {MODULES} "
                              "(or dotted names inside them; \"\" for all)")
        _check_ratio(self.ratio, f"{where}.ratio", numbers=False)
        previous = 0
        for i, phase in enumerate(self.phases):
            phase.validate(f"{where}.phases[{i}]")
            if phase.until_step <= previous:
                raise ConfigError(f"{where}.phases[{i}].until_step must be above {previous} (phases in step "
                                  f"order), got {phase.until_step}")
            previous = phase.until_step
        if self.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"{where}.prompt_format must be one of {list(PROMPT_FORMATS)}, got {self.prompt_format!r}")

    def trains(self, module_name: str) -> bool:
        return any(p == "" or module_name == p or module_name.startswith(p + ".") for p in self.trainable)


def _check_ratio(ratio: dict, where: str, numbers: bool) -> None:
    unknown = sorted(set(ratio) - set(TASK_NAMES))
    if unknown:
        raise ConfigError(f"{where}: unknown task(s) {unknown}; tasks are und, gen, text")
    kinds = (int, float) if numbers else (int,)
    if any(isinstance(v, bool) or not isinstance(v, kinds) or v < 0 for v in ratio.values()) or not any(ratio.values()):
        what = "non-negative numbers" if numbers else "non-negative integers"
        raise ConfigError(f"{where}: {what}, not all zero, e.g. {{und: 14, gen: 80, text: 6}}")


# Table 1 of v2 (lr, warm-up, steps, batch, ratio); the stage-2 opening mix: Sec. 4.1; prompt formats: Sec. 4.2
PRESETS: dict[str, StageConfig] = {
    "adaptation": StageConfig("adaptation", NEW_MODULES, 1e-4, 2000, 10_000, 512, {"und": 50, "gen": 50, "text": 0},
                              prompt_format="plain"),
    "pretrain": StageConfig("pretrain", ALL_BUT_UND_ENCODER, 1e-4, 2000, 390_000, 512,
                            {"und": 14, "gen": 80, "text": 6},
                            phases=[RatioPhase(10_000, {"und": 30, "gen": 50, "text": 20})], prompt_format="plain"),
    "sft": StageConfig("sft", [""], 2e-5, 1000, 26_000, 256, {"und": 21, "gen": 70, "text": 9}, prompt_format="chat"),
}
PRESETS.update({
    "adaptation-small": replace(PRESETS["adaptation"], name="adaptation-small", lr=1e-3, warmup_steps=50, steps=1000,
                                batch_size=32),
    # the opening mix scaled with the stage: 10,000 of 390,000 steps is 2.6 %, about 100 of 4000
    "pretrain-small": replace(PRESETS["pretrain"], name="pretrain-small", lr=5e-4, warmup_steps=100, steps=4000,
                              batch_size=32, phases=[RatioPhase(100, {"und": 30, "gen": 50, "text": 20})]),
    "sft-small": replace(PRESETS["sft"], name="sft-small", lr=1e-4, warmup_steps=50, steps=1000, batch_size=32),
})


def stage_preset(name: str) -> StageConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown stage preset {name!r}; presets are {sorted(PRESETS)}")
    preset = PRESETS[name]
    return replace(preset, trainable=list(preset.trainable), ratio=dict(preset.ratio),
                   phases=[RatioPhase(p.until_step, dict(p.ratio)) for p in preset.phases])
