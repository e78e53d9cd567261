"""The recipe of the embedded default model, run by ``janusflow recipe shapes`` (docs/recipe.md):

    config     the recipe as a typed config (configs/recipe/*.yaml): stages, sizes, seeds
    build      the command's engine: stages in order, resumable, the records
    pack       a run folder carried to another machine (GPU leases)
    run        a trained stage in segments; parts 1-3 (VAE, tokenizer, SigLIP, LM)
    vae        part 1: a small AutoencoderKL for 64 x 64 shapes-world images (latent 4 x 16 x 16)
    corpus     the world's text (prompts, questions and answers, descriptions, chat template)
    siglip     part 2: a SigLIP understanding encoder pre-trained with the sigmoid image-text loss
    lm         part 3: a small Llama LM pre-trained on the world's text
    parts      the parts put together as a JanusFlow model
    unified    part 4: the JanusFlow stages (adaptation, unified pre-training, SFT)
    streams    part 4's data, rendered on the fly
    soup       the weighted mean of fine-tunes' weights
    assemble   the shipped folder: fp16 weights, tokenizer, processor, vae/, sampling defaults
    ablation   ``janusflow ablation shapes``: the paper's Table 6 ablations as arms of the recipe x seeds
    curves     learning curves (score vs step) as a PNG, drawn with Pillow
"""
