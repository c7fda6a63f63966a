#!/usr/bin/env bash
# DPO with a frozen, soft and hard reference (= DPO, TR-DPO soft, TR-DPO hard) on the embedded task,
# 3 seeds each: the README's comparison table.
# Run from the repository root: bash sweeps/embedded_compare.sh [extra overrides]   (~10 min on 2 CPU cores)
# Then read <sweep dir>/*/summary.json (golden_reward, golden_reward_init, val/init/rewards/accuracies).
set -euo pipefail
python -m tralign.train -m \
  method=dpo ref_update=none,soft,hard seed=0,1,2 \
  logger=csv trainer.enable_progress_bar=false \
  hydra.sweep.dir=multirun/embedded_compare "$@"
