"""Numerical parity against outputs recorded from the official implementation.

A fixture folder (layout of ``shared/reference/parity-small``) holds an official-format
``config.json`` and ``model.safetensors`` and a ``cases.safetensors`` of inputs and outputs for three
cases: (a) ``und.*`` understanding, (b) ``vel.*`` one guided velocity step, (c) ``gen.*`` the whole
Euler loop, recomputed three ways: the reference loop (full recompute), the reference loop with the
prompt cache (``@cached``), and what the pipeline runs, diffusers' ``FlowMatchEulerDiscreteScheduler``
with the prompt cache (``@scheduler``). The model is built from the fixture's config and loaded through the converter; every
recorded output is recomputed from the recorded inputs and compared (max absolute difference).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .checkpoint import load_model
from .errors import CheckpointError

TOLERANCE = 1e-4


@dataclass
class Comparison:
    name: str
    max_abs_diff: float
    shape: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= TOLERANCE


def _load_cases(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    file = folder / "cases.safetensors"
    if not file.is_file():
        raise CheckpointError(f"{folder}: no cases.safetensors")
    with safe_open(file, framework="pt") as f:
        info = json.loads((f.metadata() or {}).get("fixture_info", "{}"))
        return {k: f.get_tensor(k) for k in f.keys()}, info


@torch.inference_mode()
def understanding_case(model, c: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    pixels = c["und.pixel_values"]
    features = model.und_encoder(pixels.flatten(0, 1))  # (B*n, P, W), images in (b n) order
    embeds = model.prepare_inputs_embeds(c["und.input_ids"], pixels, c["und.images_seq_mask"],
                                         c["und.images_emb_mask"])
    hidden = model.llm(inputs_embeds=embeds, attention_mask=c["und.attention_mask"]).last_hidden_state
    logits = model.language_model(inputs_embeds=embeds, attention_mask=c["und.attention_mask"]).logits
    return {"und.vision_features": features, "und.vision_aligned": model.und_aligner(features),
            "und.inputs_embeds": embeds, "und.last_hidden_state": hidden, "und.logits": logits}


@torch.inference_mode()
def velocity_case(model, c: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from .flow import guided_velocity

    z, t, mask = c["vel.z"], c["vel.t"], c["vel.attention_mask"]
    z_in = torch.cat([z, z])  # cond rows, then uncond rows
    prefix = model.embed_prompt(c["vel.tokens"])  # (2B, L-1, D)
    tokens, t_emb, skip = model.encode_latent(z_in, t)
    hidden = model.llm(inputs_embeds=torch.cat([prefix, t_emb[:, None], tokens], 1),
                       attention_mask=mask).last_hidden_state
    N = tokens.shape[1]
    dec_aligned = model.gen_dec_aligner(model.gen_dec_aligner_norm(hidden[:, -N:]))
    v = model.forward_generation(prefix, z_in, t, attention_mask=mask).velocity
    v_cond, v_uncond = v.chunk(2)
    v_cfg = guided_velocity(v_cond, v_uncond, float(c["vel.cfg_weight"]))
    return {"vel.prompt_embeds": prefix, "vel.enc_feature": skip, "vel.t_emb": t_emb, "vel.z_emb_aligned": tokens,
            "vel.llm_last_hidden_state": hidden, "vel.dec_aligned": dec_aligned, "vel.v": v, "vel.v_cfg": v_cfg,
            "vel.z_next": z + c["vel.dt"] * v_cfg}


@torch.inference_mode()
def generation_case(model, c: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from .processor import make_uncond
    from .sampler import SamplerConfig, sample_latents

    z0 = c["gen.z0"]
    B, steps, w = z0.shape[0], int(c["gen.num_steps"]), float(c["gen.cfg_weight"])
    cond = c["gen.input_ids"][None].expand(B, -1)
    cond_mask = torch.ones_like(cond)
    uncond, uncond_mask = make_uncond(cond, cond_mask, int(c["gen.pad_id"]))
    tokens = torch.cat([cond, uncond])
    out = {"gen.tokens": tokens}
    for use_cache in (False, True):  # the full-recompute reference path and the prompt-cached path
        result = sample_latents(model, tokens, torch.cat([cond_mask, uncond_mask]), z0,
                                SamplerConfig(num_steps=steps, guidance_scale=w, solver="euler",
                                              use_prompt_cache=use_cache), record=True)
        suffix = "" if not use_cache else "@cached"
        out.update({f"gen.attention_mask{suffix}": result.attention_mask, f"gen.t_steps{suffix}": result.t_steps,
                    f"gen.z_traj{suffix}": result.trajectory, f"gen.v_cfg_traj{suffix}": result.velocities,
                    f"gen.z_final{suffix}": result.latents})
    out.update(scheduler_case(model, tokens, torch.cat([cond_mask, uncond_mask]), z0, steps, w))
    return out


def scheduler_case(model, tokens, attention_mask, z0, steps: int, w: float) -> dict[str, torch.Tensor]:
    """Case (c) as the pipeline samples: the Euler scheduler's trajectory and final latents."""
    from .flow import as_scheduler_model
    from .sampler import SamplerConfig, denoise, guided_field
    from .schedulers import make_scheduler, set_timesteps

    scheduler = make_scheduler("euler")
    set_timesteps(scheduler, steps)
    velocity, _ = guided_field(model, tokens, attention_mask, z0, SamplerConfig(num_steps=steps, guidance_scale=w))
    trajectory = [z0.float()]
    z = denoise(as_scheduler_model(velocity), z0.float(), scheduler,
                after_step=lambda i, timestep, z: trajectory.append(z) or z)
    return {"gen.z_traj@scheduler": torch.stack(trajectory), "gen.z_final@scheduler": z}


def run_parity(folder: str | Path) -> list[Comparison]:
    """Recompute every recorded output of a fixture folder; one comparison per output."""
    folder = Path(folder)
    torch.manual_seed(0)
    model = load_model(folder, dtype=torch.float32, device="cpu")
    cases, _ = _load_cases(folder)
    ours: dict[str, torch.Tensor] = {}
    if "und.input_ids" in cases:
        ours.update(understanding_case(model, cases))
    if "vel.tokens" in cases:
        ours.update(velocity_case(model, cases))
    if "gen.input_ids" in cases:
        ours.update(generation_case(model, cases))
    results = []
    for name, value in ours.items():
        ref = cases.get(name.split("@")[0])
        if ref is None:
            continue
        if tuple(value.shape) != tuple(ref.shape):
            results.append(Comparison(name, float("inf"), tuple(value.shape)))
            continue
        diff = (value.double() - ref.double()).abs().max().item() if value.numel() else 0.0
        results.append(Comparison(name, diff, tuple(value.shape)))
    return results
