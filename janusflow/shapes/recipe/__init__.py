"""The recipe's first parts, each a task for the shared trainer (:mod:`janusflow.train`):

    vae      part 1: a small AutoencoderKL for 64 x 64 shapes-world images (latent 4 x 16 x 16)
    corpus   the world's text (prompts, questions and answers, descriptions, chat template)
    siglip   part 2: a SigLIP understanding encoder pre-trained with the sigmoid image-text loss
    lm       part 3: a small Llama LM pre-trained on the world's text
    run      one resumable command for the whole recipe:
             python -m janusflow.shapes.recipe.run

Artifacts go to ``RUN/model/parts/{vae,und_encoder,tokenizer,llm}``; docs/recipe.md
records their sizes, wall times and measured quality.
"""
