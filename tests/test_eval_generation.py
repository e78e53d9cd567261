"""Generation metrics (janusflow/eval/): FID and KID through torchmetrics on the embeddings of a tiny local
CLIP folder, the CLIP score, and `janusflow eval generation` on the GenEval layout that `janusflow generate`
writes, with its sampling settings beside every number.

The CLIP folders are built here with transformers (CLIPConfig, CLIPModel.save_pretrained, a word-level
tokenizer): nothing downloads. What each test proves:
- FID: torchmetrics' number on our embeddings equals the closed form computed in numpy; a set against
  itself gives ~0; blurring the set moves it away, more with more blur (KID too).
- CLIP score: the arithmetic (100 max(cos, 0) of each image with its own prompt) against transformers'
  own CLIPModel forward; and, with a tiny CLIP trained here for a few seconds to pair colours with colour
  words (random weights match nothing), images score higher against their own captions than against
  swapped ones, through the whole command (GenEval metadata -> prompts -> tokenizer -> text tower).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from janusflow.cli import main
from janusflow.errors import InputError
from janusflow.eval.clip_score import clip_scores
from janusflow.eval.distribution import fid_kid
from janusflow.eval.features import ImageEmbedder, TextEmbedder, embed_images, pil_to_uint8

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 50, 220), "yellow": (230, 220, 40)}
WORDS = ["a", "photo", "of", "square", *COLORS]


def make_tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<|startoftext|>", "<|endoftext|>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<|startoftext|> $A <|endoftext|>",
                                                       special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                            pad_token="<|endoftext|>", unk_token="<unk>").save_pretrained(folder)
    return len(vocab)


def tiny_clip(seed=0):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=3 + len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2),
        projection_dim=32)
    return CLIPModel(config).eval()


def caption(color):
    return f"a photo of a {color} square"


def scene(color, rng, size=32):
    """A coloured square on a noisy grey background."""
    pixels = rng.integers(90, 160, (size, size, 3)).astype(np.uint8)
    x, y, side = rng.integers(2, 10), rng.integers(2, 10), rng.integers(14, 20)
    pixels[y:y + side, x:x + side] = COLORS[color]
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def random_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip-random")
    tiny_clip().save_pretrained(folder)
    make_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def trained_clip(tmp_path_factory):
    """The tiny CLIP after 120 contrastive steps on (scene of colour c, "a photo of a c square")."""
    folder = tmp_path_factory.mktemp("clip-trained")
    make_tokenizer(folder)
    model = tiny_clip(1).train()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    names = list(COLORS)
    tokens = tokenizer([caption(c) for c in names], padding=True, return_tensors="pt")
    rng = np.random.default_rng(0)
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(120):
        images = torch.cat([pil_to_uint8(scene(c, rng)) for c in names]).float() / 255
        out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                    pixel_values=(images - mean) / std, return_loss=True)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    model.eval().save_pretrained(folder)
    return folder


def blurred(images, radius):
    return [im.filter(ImageFilter.GaussianBlur(radius)) if radius else im for im in images]


def save_all(images, folder):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        im.save(folder / f"{i:03d}.png")
        paths.append(folder / f"{i:03d}.png")
    return paths


def numpy_fid(a, b):
    """|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2), in float64."""
    a, b = a.double().numpy(), b.double().numpy()
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(w.clip(min=0))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ sb @ root_a).clip(min=0)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(cross).sum())


def test_fid_kid_against_itself_and_blur(random_clip, tmp_path):
    rng = np.random.default_rng(3)
    images = [scene(c, rng) for _ in range(25) for c in COLORS]  # 100 scenes
    second_draw = [scene(c, rng) for _ in range(25) for c in COLORS]  # 100 more from the same distribution
    embedder = ImageEmbedder(random_clip)
    assert embedder.num_features == 32 and "clip image embedding (projected), 32-d" in embedder.name
    base = embed_images(embedder, save_all(images, tmp_path / "base"), batch_size=32)
    same = fid_kid(base, base)
    assert abs(same.fid) < 1e-6 and same.fid == pytest.approx(numpy_fid(base, base), abs=1e-6)
    draw = fid_kid(base, embed_images(embedder, save_all(second_draw, tmp_path / "draw")), kid_subsets=20)
    fids, kids = [], []
    for radius in (0.7, 1.5, 3.0):
        other = embed_images(embedder, save_all(blurred(images, radius), tmp_path / f"blur{radius}"))
        scores = fid_kid(base, other, kid_subsets=20)
        assert scores.fid == pytest.approx(numpy_fid(base, other), rel=1e-6)
        fids.append(scores.fid)
        kids.append(scores.kid_mean)
    # FID rises with blur, and even light blur is farther than a second draw of the same scenes
    assert 5 * draw.fid < fids[0] < fids[1] < fids[2]
    # KID (unbiased: ~0 for two draws of one distribution) is positive for every blur, well above the draw's;
    # with these random features it is not monotonic in the radius, so that is not asserted
    assert all(k > 4 * abs(draw.kid_mean) for k in kids)
    assert same.kid_subset_size == 100 and draw.n_generated == 100
    with pytest.raises(InputError, match="at least 2 images"):
        fid_kid(base[:1], base)


def test_clip_score_arithmetic():
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    texts = torch.tensor([[1.0, 1.0], [-1.0, 0.0], [0.0, 5.0]])
    # cos 1/sqrt(2) -> 70.71; cos -1 -> clamped to 0; cos 1 -> 100
    assert clip_scores(images, texts).tolist() == pytest.approx([100 / 2 ** 0.5, 0.0, 100.0])


def test_clip_score_is_transformers_cosine(random_clip):
    from transformers import AutoTokenizer, CLIPModel

    rng = np.random.default_rng(1)
    images = [scene(c, rng) for c in COLORS]  # already at the model's 32 x 32: the resize keeps them
    prompts = [caption(c) for c in COLORS]
    embedder = ImageEmbedder(random_clip)
    ours = clip_scores(torch.cat([embedder(pil_to_uint8(im)) for im in images]), TextEmbedder(embedder)(prompts))
    model = CLIPModel.from_pretrained(random_clip, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(random_clip, local_files_only=True)
    tokens = tokenizer(prompts, padding=True, return_tensors="pt")
    pixels = (torch.cat([pil_to_uint8(im) for im in images]).float() / 255 - embedder.mean) / embedder.std
    with torch.no_grad():
        out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixels)
    cos = (out.logits_per_image / model.logit_scale.exp()).diagonal()  # (N,) image i with text i
    assert ours.tolist() == pytest.approx((100 * cos.clamp(min=0)).tolist(), abs=1e-3)


def geneval_folder(root, pairs, settings=None):
    """The GenEval layout: root/{i:05d}/metadata.jsonl and samples/{k:04d}.png, one prompt a folder."""
    for i, (prompt, images) in enumerate(pairs):
        folder = root / f"{i:05d}"
        (folder / "samples").mkdir(parents=True)
        (folder / "metadata.jsonl").write_text(json.dumps({"prompt": prompt}) + "\n")
        for k, im in enumerate(images):
            im.save(folder / "samples" / f"{k:04d}.png")
    if settings is not None:
        (root / "janusflow_generation.json").write_text(json.dumps(settings))
    return root


def test_clip_score_higher_for_matching_captions(trained_clip, tmp_path, capsys):
    rng = np.random.default_rng(7)
    names = list(COLORS)
    images = {c: [scene(c, rng) for _ in range(3)] for c in names}
    settings = {"num_inference_steps": 30, "guidance_scale": 2.0, "seed": 0}
    matching = geneval_folder(tmp_path / "match", [(caption(c), images[c]) for c in names], settings)
    swapped = geneval_folder(tmp_path / "swap", [(caption(names[(i + 1) % 4]), images[c]) for i, c in enumerate(names)],
                             settings)
    scores = {}
    for name, folder in (("matching", matching), ("swapped", swapped)):
        out = tmp_path / f"{name}.json"
        assert main(["eval", "generation", str(folder), "--clip-model", str(trained_clip), "--out", str(out)]) == 0
        (record,) = json.loads(out.read_text())["metrics"]
        assert record["metric"] == "clip_score" and record["sampling"] == settings and record["n_generated"] == 12
        scores[name] = record["value"]
    assert scores["matching"] > scores["swapped"] + 10
    assert "sampling num_inference_steps=30 guidance_scale=2.0 seed=0" in capsys.readouterr().out


def test_eval_generation_reads_the_settings_generate_wrote(tmp_path, random_clip, capsys):
    from inference_helpers import make_model_folder

    model = make_model_folder(tmp_path / "tiny-model")
    metadata = tmp_path / "meta.jsonl"
    metadata.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["a red circle", "a blue square"]))
    samples = tmp_path / "samples"
    assert main(["generate", "--geneval-metadata", str(metadata), "--out", str(samples), "--model", str(model),
                 "--n-samples", "2", "--steps", "2", "--seed", "5"]) == 0
    reference = tmp_path / "reference"
    save_all([scene(c, np.random.default_rng(i)) for i, c in enumerate(COLORS)], reference / "nested")
    out = tmp_path / "metrics.json"
    capsys.readouterr()
    code = main(["eval", "generation", str(samples), "--reference", str(reference), "--feature-model", str(random_clip),
                 "--clip-model", str(random_clip), "--out", str(out), "--kid-subsets", "5"])
    printed = capsys.readouterr().out
    assert code == 0
    records = json.loads(out.read_text())["metrics"]
    assert [r["metric"] for r in records] == ["fid", "kid", "clip_score"]
    written = json.loads((samples / "janusflow_generation.json").read_text())
    for r in records:  # every number carries the settings generate used
        assert r["sampling"] == written and r["sampling"]["num_inference_steps"] == 2 and r["sampling"]["seed"] == 5
        assert r["n_generated"] == 4
    assert records[0]["n_reference"] == 4 and records[1]["subset_size"] == 4 and "32-d" in records[0]["feature"]
    assert printed.count("num_inference_steps=2") == 3


def test_eval_generation_errors(tmp_path, random_clip, capsys):
    pairs = [("a red square", [scene("red", np.random.default_rng(0))] * 2)]
    samples = geneval_folder(tmp_path / "s", pairs, {"num_inference_steps": 30})

    def run(*argv):
        code = main(["eval", "generation", *map(str, argv)])
        return code, capsys.readouterr().err

    code, err = run(samples, "--clip-model", tmp_path / "no-such-clip")
    assert code == 1 and err.count("\n") == 1
    assert "--clip-model: model folder not found" in err and "no-such-clip" in err
    code, err = run(samples, "--reference", samples)
    assert code == 1 and "--feature-model DIR" in err
    empty = tmp_path / "empty-model"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "clip"}))
    code, err = run(samples, "--reference", samples, "--feature-model", empty)
    assert code == 1 and err.count("\n") == 1 and "--feature-model: cannot load" in err and "empty-model" in err
    code, err = run(tmp_path / "nowhere", "--clip-model", random_clip)
    assert code == 1 and "samples folder not found" in err
    no_tokenizer = tmp_path / "no-tokenizer"
    from transformers import CLIPModel
    CLIPModel.from_pretrained(random_clip, local_files_only=True).save_pretrained(no_tokenizer)
    capsys.readouterr()  # transformers' loading bar
    code, err = run(samples, "--clip-model", no_tokenizer)
    assert code == 1 and err.count("\n") == 1 and "no tokenizer" in err
    code, err = run(samples, "--clip-model", random_clip, "--sampling-settings", tmp_path / "none.json")
    assert code == 1 and "sampling settings file not found" in err
    unknown = geneval_folder(tmp_path / "u", pairs)  # no settings file: a note, the numbers still come
    code, err = run(unknown, "--clip-model", random_clip, "--out", tmp_path / "u.json")
    assert code == 0 and "sampling settings are unknown" in err
    assert json.loads((tmp_path / "u.json").read_text())["metrics"][0]["sampling"] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_eval_generation_on_cuda_bf16_is_close_to_the_cpu(tmp_path, random_clip):
    rng = np.random.default_rng(11)
    samples = geneval_folder(tmp_path / "s", [(caption(c), [scene(c, rng) for _ in range(3)]) for c in COLORS],
                             {"num_inference_steps": 30})
    reference = tmp_path / "reference"
    save_all([scene(c, rng) for _ in range(3) for c in COLORS], reference)
    values = {}
    for device, dtype in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "bf16")):
        out = tmp_path / f"{device}-{dtype}.json"
        assert main(["eval", "generation", str(samples), "--reference", str(reference), "--feature-model",
                     str(random_clip), "--clip-model", str(random_clip), "--device", device, "--dtype", dtype,
                     "--out", str(out)]) == 0
        values[device, dtype] = {r["metric"]: r["value"] for r in json.loads(out.read_text())["metrics"]}
    cpu, gpu, bf16 = values["cpu", "fp32"], values["cuda", "fp32"], values["cuda", "bf16"]
    assert gpu["clip_score"] == pytest.approx(cpu["clip_score"], abs=1e-3)
    assert gpu["fid"] == pytest.approx(cpu["fid"], rel=1e-3, abs=1e-4)
    assert bf16["clip_score"] == pytest.approx(cpu["clip_score"], abs=1.0) and math.isfinite(bf16["fid"])
