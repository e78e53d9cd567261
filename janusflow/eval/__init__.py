"""Evaluation beyond the shapes world: standard layouts and metrics (docs/evaluation.md).

    llava.py            the LLaVA question / answer layout, chunked as LLaVA's scripts split work
    exact_match.py      answers equal to the reference (raw and normalised)
    yes_no.py           POPE: accuracy, precision, recall, F1 and yes-ratio of yes/no answers
    mme.py              MME: acc and acc+ over the two questions of each image, the score per task
    multiple_choice.py  option extraction, MMBench's circular evaluation, circular question files
    cider.py            CIDEr-D as coco-caption computes it (PTB-style tokens, tf-idf, Gaussian length penalty)
    understanding.py    one entry point: a questions file + an answers file -> a metric's numbers
    images.py           image folders: the GenEval layout, reference folders, the sampling settings
    features.py         image / text embeddings from a local CLIP or SigLIP folder (transformers)
    distribution.py     FID and KID (torchmetrics) on those features
    clip_score.py       CLIP score of each image against its prompt
    cli.py              ``janusflow eval generation`` and ``janusflow eval understanding``
"""
