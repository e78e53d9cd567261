#!/usr/bin/env bash
# The recipe's parts 2-4 on one GPU, sized for a lease of about ten minutes:
#   SigLIP and LM pre-training side by side (each with its own data workers), then the three
#   JanusFlow stages; the VAE and the tokenizer are the embedded model's (janusflow/default_model/vae
#   and its tokenizer files: the recipe's part 1 and tokenizer, unchanged by the later stages). Every stage stops at its training-time budget (seconds) and
#   is resumable: rerun the same command to continue a stopped run.
#
#   RUN=runs/gpu DEVICE=cuda WORKERS=6 SIGLIP=110 LM=110 ADAPT=35 UNIFIED=165 SFT=45 scripts/recipe-gpu.sh
#
# The model is assembled (fp16) into $RUN/model/ (its parts in $RUN/model/parts/); evaluate it with
#   janusflow eval shapes --model $RUN/model
set -euo pipefail
RUN=${RUN:-runs/gpu}
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-6}
PARTS=$RUN/model/parts
mkdir -p "$PARTS"
[ -d "$PARTS/vae" ] || cp -r janusflow/default_model/vae "$PARTS/vae"
if [ ! -d "$PARTS/tokenizer" ]; then
    mkdir -p "$PARTS/tokenizer" && cp janusflow/default_model/tokenizer.json janusflow/default_model/tokenizer_config.json "$PARTS/tokenizer/"
fi
common=(--run-dir "$RUN" --parts-dir "$PARTS" --threads 1 --device "$DEVICE")
python -m janusflow.shapes.recipe.run --preset gpu --stages siglip "${common[@]}" --data-workers "$WORKERS" \
    --budget "siglip=${SIGLIP:-110}" > "$RUN/siglip.log" 2>&1 &
siglip=$!
python -m janusflow.shapes.recipe.run --preset gpu --stages lm "${common[@]}" --data-workers "$WORKERS" \
    --budget "lm=${LM:-110}" > "$RUN/lm.log" 2>&1 &
lm=$!
status=0
wait $siglip || status=$?
wait $lm || status=$?
tail -n 3 "$RUN/siglip.log" "$RUN/lm.log"
[ $status -eq 0 ] || { echo "parts 2-3 failed (see $RUN/siglip.log, $RUN/lm.log)"; exit $status; }
python -m janusflow.shapes.recipe.unified train --preset gpu "${common[@]}" --data-workers $((2 * WORKERS)) \
    --budget "adapt=${ADAPT:-35}" --budget "unified=${UNIFIED:-165}" --budget "sft=${SFT:-45}" 2>&1 \
    | tee "$RUN/part4.log"
