#!/usr/bin/env bash
# The README's transfer-learning table: the two default commands on garbage26 (wall time from `date`),
# the frozen-head 5-fold CV on random and on source-block folds, and the fine-tuning default's
# 5-fold CV on source-block folds (one full trainer run per fold, about 33 min on 2 cores).
#   flock /tmp/heavy.lock bash experiments/measure_recipes.sh /path/to/garbage26 /path/to/backbone.pth [OUT]
set -euo pipefail
DATA=$1
WEIGHTS=$2
OUT=${3:-runs/recipes}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
run() {  # name, args...
    local name=$1; shift
    local started=$(date +%s)
    python ms_impl/train.py --device CPU "$@" --output_dir "$OUT/$name" --force true > "$OUT/$name.log" 2>&1
    echo "$name: $(( $(date +%s) - started )) s wall" | tee -a "$OUT/wall_times.txt"
}
run frozen --data_path "$DATA" --pretrained "$WEIGHTS" --freeze_backbone true
run finetune --data_path "$DATA" --pretrained "$WEIGHTS"
for split in random blocks; do
    python experiments/cv_frozen.py --data_path "$DATA" --pretrained "$WEIGHTS" --split "$split" --light_views 0 \
        --cache_dir "$OUT/cv_features" --recipes readme_frozen,center_e30_wd1e-2_flip_tta,center_e30_wd1e-2_flip_whole_tta \
        > "$OUT/cv_frozen_$split.md" 2> "$OUT/cv_frozen_$split.log"
done
python experiments/cv_finetune.py --data_path "$DATA" --pretrained "$WEIGHTS" --split blocks \
    --work "$OUT/cv_ft" --name blocks_default --results "$OUT/finetune_results.md" > "$OUT/cv_finetune.log" 2>&1
tail -1 "$OUT/cv_finetune.log"
