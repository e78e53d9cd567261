"""Training stages as config: what trains, how fast, how long, on which task mix.

The paper's three stages (JanusFlow, Ma et al. 2024, Sec. 3.3 and Table 1):
1. ``adaptation``: only the randomly initialised parts train (the aligners, the begin-of-image
   embedding, the generation encoder and decoder); LLM and understanding encoder frozen.
   und : gen : text = 50 : 50 : 0.
2. ``pretrain`` (unified pre-training): everything but the understanding encoder. 14 : 80 : 6.
3. ``sft`` (supervised fine-tuning): everything. 21 : 70 : 9.
The learning rates, warm-up, step counts and batch sizes of the full-size presets are the paper's;
the ``-small`` presets scale them down for small models on one machine (e.g. the shapes world).
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


@dataclass
class StageConfig:
    name: str = "custom"
    trainable: list[str] = field(default_factory=lambda: [""])
    lr: float = 1e-4
    warmup_steps: int = 0
    steps: int = 100
    batch_size: int = 8  # samples per optimizer step, over all processes and accumulation steps
    ratio: dict[str, int] = field(default_factory=lambda: {"und": 1, "gen": 1, "text": 0})
    decay_steps: int = 0  # a linear cool-down of the lr to 0 over the last decay_steps (0: constant, the paper's)

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
        unknown = sorted(set(self.ratio) - {"und", "gen", "text"})
        if unknown:
            raise ConfigError(f"{where}.ratio: unknown task(s) {unknown}; tasks are und, gen, text")
        if any(not isinstance(v, int) or v < 0 for v in self.ratio.values()) or not any(self.ratio.values()):
            raise ConfigError(f"{where}.ratio: non-negative integers, not all zero, e.g. {{und: 14, gen: 80, text: 6}}")

    def trains(self, module_name: str) -> bool:
        return any(p == "" or module_name == p or module_name.startswith(p + ".") for p in self.trainable)


PRESETS: dict[str, StageConfig] = {
    "adaptation": StageConfig("adaptation", NEW_MODULES, 1e-4, 2000, 10_000, 512, {"und": 50, "gen": 50, "text": 0}),
    "pretrain": StageConfig("pretrain", ALL_BUT_UND_ENCODER, 1e-4, 2000, 380_000, 512,
                            {"und": 14, "gen": 80, "text": 6}),
    "sft": StageConfig("sft", [""], 2e-5, 1000, 26_000, 256, {"und": 21, "gen": 70, "text": 9}),
}
PRESETS.update({
    "adaptation-small": replace(PRESETS["adaptation"], name="adaptation-small", lr=1e-3, warmup_steps=50, steps=1000,
                                batch_size=32),
    "pretrain-small": replace(PRESETS["pretrain"], name="pretrain-small", lr=5e-4, warmup_steps=100, steps=4000,
                              batch_size=32),
    "sft-small": replace(PRESETS["sft"], name="sft-small", lr=1e-4, warmup_steps=50, steps=1000, batch_size=32),
})


def stage_preset(name: str) -> StageConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown stage preset {name!r}; presets are {sorted(PRESETS)}")
    preset = PRESETS[name]
    return replace(preset, trainable=list(preset.trainable), ratio=dict(preset.ratio))
