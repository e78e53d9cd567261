"""The shapes world (spec v1: /work/shared/shapes-world.md): a small, exactly specified visual
world with an exact renderer, scene and prompt samplers, question/answer generation and an exact
scorer for both tasks. Random functions take a `numpy.random.Generator` as `rng`.

    world      vocabulary (palette, shapes, numbers, relations), Obj, Scene, the relation rule
    render     render(scene) -> 64 x 64 RGB PIL image, hard edges
    sampler    sample_scene, scene_for_prompt
    prompts    PromptSpec, all_prompts, sample_prompt, parse_prompt, caption_for_scene
    questions  questions_for_scene, sample_question, describe, score_answer
    scorer     detect_objects, passes, score_image, score_generation, score_understanding

Importing the package registers the best-of judge "shapes" (``self_check.ShapesJudge``) with
:mod:`janusflow.judges`.
"""

from ..judges import register_judge
from .prompts import PromptSpec, all_prompts, caption_for_scene, parse_prompt, sample_prompt, true_prompts
from .questions import FORMS, QA, describe, parse_description, questions_for_scene, sample_question, score_answer
from .render import render, render_array, shape_mask
from .sampler import place_objects, sample_scene, scene_for_prompt
from .scorer import (
    Detection, connected_components, detect_objects, passes, score_generation, score_image,
    score_understanding, snap_colors,
)
from .world import (
    BACKGROUND, CATEGORIES, COLORS, IMAGE_SIZE, NUMBER_WORDS, PALETTE, PLURALS, RELATIONS, SHAPES,
    Obj, Scene, boxes_apart, inside_canvas, relation_holds,
)



def _shapes_judge(model, processor):  # the self-check imports the understanding stack: only when a judge is made
    from .self_check import shapes_judge

    return shapes_judge(model, processor)


register_judge("shapes", _shapes_judge)  # image_generation_config.json: {"judge": "shapes"}

__all__ = [
    "BACKGROUND", "CATEGORIES", "COLORS", "FORMS", "IMAGE_SIZE", "NUMBER_WORDS", "PALETTE",
    "PLURALS", "QA", "RELATIONS", "SHAPES", "Detection", "Obj", "PromptSpec", "Scene",
    "all_prompts", "boxes_apart", "caption_for_scene", "connected_components", "describe",
    "detect_objects", "inside_canvas", "parse_description", "parse_prompt", "passes",
    "place_objects", "questions_for_scene", "relation_holds", "render", "render_array",
    "sample_prompt", "sample_question", "sample_scene", "scene_for_prompt", "score_answer",
    "score_generation", "score_image", "score_understanding", "shape_mask", "snap_colors",
    "true_prompts",
]
