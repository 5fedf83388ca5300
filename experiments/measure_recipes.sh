#!/usr/bin/env bash
# The README's transfer-learning table: the two default commands on garbage26 (wall time from `time`),
# then the fine-tuning recipe on one train-only fold (experiments/make_fold.py) and the frozen-head 5-fold CV.
#   flock /tmp/heavy.lock bash experiments/measure_recipes.sh /path/to/garbage26 /path/to/backbone.pth
set -euo pipefail
DATA=$1
WEIGHTS=$2
OUT=${3:-runs/recipes}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
[ -d runs/fold0 ] || python experiments/make_fold.py --data_path "$DATA" --output runs/fold0
run() {  # name, args...
    local name=$1; shift
    local started=$(date +%s)
    python ms_impl/train.py --device CPU "$@" --output_dir "$OUT/$name" --force true > "$OUT/$name.log" 2>&1
    echo "$name: $(( $(date +%s) - started )) s wall" | tee -a "$OUT/wall_times.txt"
}
run frozen --data_path "$DATA" --pretrained "$WEIGHTS" --freeze_backbone true
run finetune --data_path "$DATA" --pretrained "$WEIGHTS"
python experiments/cv_frozen.py --data_path "$DATA" --pretrained "$WEIGHTS" \
    --recipes readme_frozen,center_e30_wd1e-3_flip_tta \
    > "$OUT/cv_frozen.md" 2> "$OUT/cv_frozen.log"
run finetune_fold0 --data_path runs/fold0 --pretrained "$WEIGHTS"
run frozen_fold0 --data_path runs/fold0 --pretrained "$WEIGHTS" --freeze_backbone true
