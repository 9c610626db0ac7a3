#!/usr/bin/env bash
# REINFORCE++ with a per-prompt baseline (reinforce_baseline) and MOSLIM.   Usage: bash launch/reinforce_pp.sh [inprocess|remote]
source "$(dirname "$0")/common.sh" "${1:-inprocess}"
submit \
  --algo.advantage.estimator reinforce_baseline --rollout.n_samples_per_prompt 4 \
  --algo.kl.init_coef 1e-3 --algo.kl.use_loss --algo.kl.estimator k2
