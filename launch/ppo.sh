#!/usr/bin/env bash
# PPO (GAE) with MOSLIM. The critic starts from the policy: OpenRLHF would otherwise initialise it from the reward
# model path, a multi-head classifier with its own tokenizer.   Usage: bash launch/ppo.sh [inprocess|remote]
source "$(dirname "$0")/common.sh" "${1:-inprocess}"
submit \
  --algo.advantage.estimator gae --rollout.n_samples_per_prompt 1 \
  --critic.model_name_or_path "$POLICY" --critic.num_nodes 1 --critic.num_gpus_per_node "$GPUS" \
  --critic.adam.lr 9e-6 --algo.kl.init_coef 0.01
