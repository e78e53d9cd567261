#!/usr/bin/env bash
# Continue a trained model on one GPU within a fixed wall time, and pack what it made so that it
# survives a machine that is given back: the assembled fp16 model (or, when the run was stopped
# before assembling, the newest stage export) goes into $PACK in parts of at most 15 MiB.
#
#   LIMIT=150 PACK=/tmp/pack scripts/gpu-continue.sh --stages sft --start janusflow/default_model \
#       --set sft.batch_size=2048 --set sft.steps=320 --set sft.decay_steps=220 --budget sft=95 ...
#
# Every argument goes to `python -m janusflow.shapes.recipe.unified train --preset gpu`; RUN (runs/cont)
# is its run folder and PY (python3) the Python. LIMIT (seconds) stops the training whatever it is
# doing, so the packing always runs inside a lease's time. Unpack: `cat $PACK/model.tar.part-* | tar -x`.
set -uo pipefail
RUN=${RUN:-runs/cont}
PACK=${PACK:-$RUN/pack}
LIMIT=${LIMIT:-540}
mkdir -p "$RUN" "$PACK"
export PYTHONUNBUFFERED=1
timeout "$LIMIT" "${PY:-python3}" -m janusflow.shapes.recipe.unified train --preset gpu --run-dir "$RUN" \
    --parts-dir "$RUN/model/parts" --threads 1 --device "${DEVICE:-cuda}" --data-workers "${WORKERS:-14}" \
    "$@" > "$RUN/train.log" 2>&1
echo "train exit $?" >> "$RUN/train.log"
tail -n 5 "$RUN/train.log"
files=("$RUN/train.log")
if [ -f "$RUN/model/model.safetensors" ]; then
    files+=("$RUN/model/model.safetensors" "$RUN/model/config.json")
else  # stopped early: the newest export of any stage (fp32; assemble it with recipe.assemble)
    newest=$(ls -td "$RUN"/*/export* 2>/dev/null | head -n 1)
    [ -n "$newest" ] && files+=("$newest/model.safetensors" "$newest/config.json")
fi
for f in "$RUN"/*/DONE.json "$RUN"/*/log.csv "$RUN"/*/progress.json; do
    [ -f "$f" ] && files+=("$f")
done
tar -cf "$RUN/model.tar" "${files[@]}" && split -b 15m "$RUN/model.tar" "$PACK/model.tar.part-" && rm "$RUN/model.tar"
ls -la "$PACK"
