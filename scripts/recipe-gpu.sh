#!/usr/bin/env bash
# `janusflow recipe shapes` on one GPU inside a fixed-length lease: run for at most LIMIT seconds (or up
# to stage UNTIL), then pack what the next machine needs to go on (docs/recipe.md, "On GPU leases").
#
#   RUN=runs/recipe-shapes LIMIT=540 UNTIL=unified PACK=$OUT/pack scripts/recipe-gpu.sh [--unpack DIR] [--seed S]
#
# Pairs of stages that read nothing of each other (PAIRS, default "siglip,lm contrast_a,contrast_b")
# run side by side, two processes on the one GPU: a model this small leaves it half idle, and two runs
# at once nearly doubled the samples a second (docs/lab-notes.md, "The second H200 lease"); the other
# stages run in order. Every call is the same resumable command, so the script may stop anywhere and run
# again. Extra arguments (--unpack DIR, --seed S, --set KEY=VALUE) go to the calls. RUN: the run folder;
# PACK: where the pack goes (files of at most 15 MiB; none when empty); WORKERS: data worker processes
# (14; half each side by side); CONFIG: the recipe (configs/recipe/shapes.yaml); DEVICE: cuda; PY: the
# Python (python3).
set -uo pipefail
RUN=${RUN:-runs/recipe-shapes}
LIMIT=${LIMIT:-540}
UNTIL=${UNTIL:-}
PACK=${PACK:-}
WORKERS=${WORKERS:-14}
PAIRS=${PAIRS:-siglip,lm contrast_a,contrast_b}
CONFIG=${CONFIG:-configs/recipe/shapes.yaml}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
end=$((SECONDS + LIMIT))
args=() unpacked=()  # --unpack applies once, to the first call
while [ $# -gt 0 ]; do
    if [ "$1" = "--unpack" ]; then unpacked=(--unpack "$2"); shift 2; else args+=("$1"); shift; fi
done
mkdir -p "$RUN"
base=("$PY" -m janusflow recipe shapes --out "$RUN" --config "$CONFIG" "${args[@]}")

recipe() {  # recipe WORKERS ARGS...: one call, inside what is left of the lease
    local workers=$1 left=$((end - SECONDS)); shift
    [ "$left" -gt 20 ] || return 1
    timeout -k 10 $((left + 30)) "${base[@]}" --device "${DEVICE:-cuda}" --threads 1 --data-workers "$workers" \
        --time-limit "$left" "${unpacked[@]}" "$@"
    local status=$?
    unpacked=()
    return $status
}
position() { local i; for i in "${!order[@]}"; do [ "${order[$i]}" = "$1" ] && echo "$i" && return; done; echo -1; }
done_() { [ -f "$RUN/stages/$1/DONE.json" ]; }

"${base[@]}" --list "${unpacked[@]}" > "$RUN/stages.txt" || exit 1
unpacked=()
mapfile -t order < <(awk 'NR > 1 { print $1 }' "$RUN/stages.txt")
last=$((${#order[@]} - 1))
[ -n "$UNTIL" ] && last=$(position "$UNTIL")
[ "$last" -ge 0 ] || { echo "no stage $UNTIL"; exit 1; }
for pair in $PAIRS; do
    a=${pair%,*} b=${pair#*,}
    i=$(position "$a"); j=$(position "$b")
    [ "$i" -gt 0 ] && [ "$j" -gt 0 ] && [ "$i" -le "$last" ] && [ "$j" -le "$last" ] || continue
    first=$((i < j ? i : j))
    recipe "$WORKERS" --until "${order[$((first - 1))]}" || break
    if ! done_ "$a" || ! done_ "$b"; then
        recipe $((WORKERS / 2)) --only "$a" > "$RUN/$a.log" 2>&1 &
        pa=$!
        recipe $((WORKERS / 2)) --only "$b" > "$RUN/$b.log" 2>&1 &
        pb=$!
        wait $pa; wait $pb
        tail -n 4 "$RUN/$a.log" "$RUN/$b.log"
    fi
done
recipe "$WORKERS" --until "${order[$last]}"
if [ -n "$PACK" ]; then
    "${base[@]}" --list --pack "$PACK"
fi
