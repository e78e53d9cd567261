"""benchmarks/bench_gpu.py end to end at the tiny preset on the CPU (the CUDA-only parts, the CUDA graph
and the compiled step, are skipped there): every section records its rows, the fast path agrees with
the release path, and a section over its budget is recorded without losing the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"


def run(tmp_path, *args) -> dict:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), "--preset", "tiny", "--device", "cpu", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "results.md").read_text().startswith("# GPU benchmark: preset tiny")
    return json.loads((out / "results.json").read_text())


def test_every_section_runs_at_the_tiny_preset(tmp_path):
    results = run(tmp_path)
    sections = results["sections"]
    assert {k: v["status"] for k, v in sections.items()} == {"generation": "ok", "understanding": "ok", "training": "ok"}
    generation = sections["generation"]["rows"]
    assert {(r["batch"], r["path"]) for r in generation} == {(b, p) for b in (1, 5)
                                                             for p in ("release", "cached", "static_eager")}
    for row in generation:
        assert row["images_per_s"] > 0 and row["run_s"] > 0
        if row["path"] != "release":
            assert row["agrees"] and row["velocity_rel_err"] < 1e-4 and row["latents_rel_err"] < 1e-4
    understanding = sections["understanding"]["rows"]
    assert [r["batch"] for r in understanding] == [1, 2]
    assert all(r["prompt_tokens"] > 16 + 20 and r["ttft_s"] > 0 and r["tokens_per_s"] > 0 for r in understanding)
    training = {r["run"].split(" ")[0]: r for r in sections["training"]["rows"]}
    assert set(training) == {"full", "LoRA"}
    for row in training.values():
        assert row["tokens_per_s"] > 0 and row["model_tflop_per_step"] > 0 and 0 < row["mfu"] < 1
        assert row["loss"] == row["loss"]  # finite training loss, not NaN
    assert training["LoRA"]["trainable_params"] < training["full"]["trainable_params"]


def test_a_section_over_its_budget_is_recorded_and_the_next_still_runs(tmp_path):
    results = run(tmp_path, "--sections", "generation", "understanding", "--budget", "generation=0.5",
                  "--batches", "1", "5", "16", "--steps", "200")
    generation, understanding = results["sections"]["generation"], results["sections"]["understanding"]
    assert generation["status"] in ("failed", "partial") and "OutOfBudget" in generation["error"]
    assert understanding["status"] == "ok" and understanding["rows"]
