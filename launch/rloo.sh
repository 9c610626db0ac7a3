#!/usr/bin/env bash
# RLOO (leave-one-out baseline) with MOSLIM.   Usage: bash launch/rloo.sh [inprocess|remote]
source "$(dirname "$0")/common.sh" "${1:-inprocess}"
submit \
  --algo.advantage.estimator rloo --rollout.n_samples_per_prompt 4 \
  --algo.kl.init_coef 1e-3 --algo.kl.use_loss --algo.kl.estimator k2
