#!/usr/bin/env bash
# GRPO (group_norm) with MOSLIM.   Usage: bash launch/grpo.sh [inprocess|remote]
source "$(dirname "$0")/common.sh" "${1:-inprocess}"
submit \
  --algo.advantage.estimator group_norm --rollout.n_samples_per_prompt 8 \
  --algo.kl.init_coef 1e-3 --algo.kl.use_loss --algo.kl.estimator k3
