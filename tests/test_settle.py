"""When a sample's composition settles (``experiments.settle``): the data prediction per step, the
settle step, and the final step being the evaluation's image."""

from __future__ import annotations

import pytest
import torch

from inference_helpers import tiny_model, tiny_processor
from janusflow.pipeline import JanusFlowPipeline, default_model_dir
from janusflow.sampler import SamplerConfig, initial_noise, sample_latents, time_grid
from janusflow.shapes.evaluate import geneval_metadata
from janusflow.shapes.prompts import parse_prompt
from experiments.settle import main, predicted_data, run, settle_step, summarize
from janusflow.shapes.scorer import detect_objects, score_image


@pytest.mark.parametrize("counts, step", [([2, 2, 2], 0), ([3, 2, 2, 2], 1), ([1, 2, 1], 2), ([4], 0),
                                          ([2, 3, 2, 2, 3], 4)])
def test_settle_step(counts, step):
    assert settle_step(counts) == step


@pytest.mark.parametrize("w", [2.0, 1.0])
def test_data_prediction_is_the_straight_line_and_ends_at_the_result(w):
    model = tiny_model(3)
    processor = tiny_processor(model)
    batch = processor.build_generation_batch(["a red circle", "two squares"], 1, guidance=w != 1.0)
    z0 = initial_noise(2, model.config, torch.Generator().manual_seed(0))
    cfg = SamplerConfig(num_steps=5, guidance_scale=w)
    result = sample_latents(model, batch.input_ids, batch.attention_mask, z0, cfg, record=True)
    x1 = predicted_data(result.trajectory, result.velocities, time_grid(cfg))
    assert x1.shape == (5, *z0.shape)
    torch.testing.assert_close(x1[0], z0 + result.velocities[0])  # t = 0: the noise plus one whole velocity
    torch.testing.assert_close(x1[2], result.trajectory[2] + 0.6 * result.velocities[2])
    torch.testing.assert_close(x1[-1], result.latents)  # the last Euler step is the prediction itself
    assert (x1[0] - x1[-1]).abs().max() > 1e-3  # and the predictions move


def test_summary_counts_groups_and_steps():
    records = [{"settle": 1, "passes": [False, True, True]}, {"settle": 2, "passes": [True, False, False]},
               {"settle": 0, "passes": [False, False, True]}]
    s = summarize(records, 2)
    assert s["samples_by_group"] == {"pass": 2, "fail": 1}
    assert s["pass_rate_by_step"] == [round(1 / 3, 4), round(1 / 3, 4), round(2 / 3, 4)]
    assert s["settled_by_step"] == {"pass": [0.5, 1.0, 1.0], "fail": [0.0, 0.0, 1.0]}
    assert s["final_pass_rate"] == pytest.approx(2 / 3)


@pytest.mark.skipif(default_model_dir() is None, reason="no embedded model")
def test_final_step_is_the_evaluations_image(tmp_path, capsys):
    """The last record of each sample reads the image ``janusflow eval shapes`` draws for that prompt."""
    pipe = JanusFlowPipeline.from_pretrained(default_model_dir(), device="cpu")
    result = run(pipe, "counting", prompts=1, images=2, seed=3)
    index, prompt = next((i, m["prompt"]) for i, m in enumerate(geneval_metadata(1, 3)) if m["tag"] == "counting")
    images = pipe(prompt, num_images_per_prompt=2, generator=3 + index).images
    assert [r["index"] for r in result["records"]] == [index, index]
    for record, image in zip(result["records"], images):
        assert len(record["counts"]) == len(record["passes"]) == 31
        assert record["counts"][-1] == len(detect_objects(image))
        assert record["passes"][-1] == score_image(parse_prompt(prompt), image)
        assert 0 <= record["settle"] <= 30
    main(["--category", "colors", "--prompts", "1", "--images", "1", "--out", str(tmp_path / "s.json")])
    out = capsys.readouterr().out
    assert "1 samples, final pass rate" in out and len(out.strip().splitlines()) == 2 + 31
    assert (tmp_path / "s.json").is_file()
    for bad in (["--prompts", "0"], ["--images", "-1"], ["--model", str(tmp_path)]):
        with pytest.raises(SystemExit):
            main(bad)
    err = capsys.readouterr().err
    assert "must be at least 1" in err and f"--model {tmp_path}" in err
