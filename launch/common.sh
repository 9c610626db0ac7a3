# Shared settings of the MOSLIM launch scripts; each script sources it. Every variable can be overridden from the
# environment. Usage:  bash launch/grpo.sh [inprocess|remote]      (DRY_RUN=1 prints the command instead)
#
#   inprocess: the MOSLIM reward model runs in OpenRLHF's reward-model actors (--reward.model_name_or_path).
#   remote:    the MOSLIM reward runs in the vLLM engine actors as a `reward_func` .py file (--reward.remote_url).
#              The launcher validates the --moslim.* reward flags and hands them to the file itself. To use a
#              running `moslim-openrlhf serve-reward` instead, set MOSLIM_REMOTE_URL=http://HOST:5000/get_reward
#              (started with the same --moslim.* reward flags: the launcher compares them with its /health).
set -euo pipefail

: "${RAY_ADDRESS:=http://127.0.0.1:8265}"
: "${POLICY:=HuggingFaceTB/SmolLM2-1.7B-Instruct}"
: "${MOSLIM_RM:=/checkpoints/moslim-rm}"          # a `moslim-openrlhf train-rm` output folder
: "${MOSLIM_SPEC:=helpsteer}"                      # bundled spec name or a YAML/JSON file
: "${MOSLIM_MAPPING:=moslim}"
: "${MOSLIM_MAPPING_KWARGS:={\}}"
: "${PROMPTS:=/data/prompts.jsonl}"                # any prompt dataset: conditioned on the fly (--moslim.sampling)
: "${SAVE_PATH:=/checkpoints/moslim-policy}"
: "${GPUS:=8}"                                     # GPUs of the (single) node; all models are colocated

REWARD_VARIANT="${1:-inprocess}"

COMMON_ARGS=(
  --ref.num_nodes 1 --ref.num_gpus_per_node "$GPUS"
  --actor.num_nodes 1 --actor.num_gpus_per_node "$GPUS"
  --vllm.num_engines "$GPUS" --vllm.tensor_parallel_size 1 --vllm.gpu_memory_utilization 0.5 --vllm.enable_sleep
  --train.colocate_all --ds.enable_sleep
  --actor.model_name_or_path "$POLICY"
  --ckpt.path "$SAVE_PATH/ckpt" --ckpt.output_dir "$SAVE_PATH" --ckpt.save_steps 20 --ckpt.save_hf
  --train.micro_batch_size 4 --train.batch_size 128
  --rollout.micro_batch_size 8 --rollout.batch_size 128 --rollout.max_new_tokens 1024
  --train.max_epochs 1 --train.num_episodes 1 --data.max_samples 100000 --data.max_len 2048
  --ds.zero_stage 3 --ds.param_dtype bf16 --actor.adam.lr 5e-7 --actor.gradient_checkpointing_enable
  --data.prompt_dataset "$PROMPTS" --data.input_key input --data.label_key label --data.apply_chat_template
  --moslim.spec "$MOSLIM_SPEC" --moslim.sampling subset --moslim.seed 42
  --moslim.mapping "$MOSLIM_MAPPING" --moslim.mapping_kwargs "$MOSLIM_MAPPING_KWARGS"
  --logger.tensorboard_dir "$SAVE_PATH/tensorboard"
)

case "$REWARD_VARIANT" in
  inprocess)
    REWARD_ARGS=(--reward.model_name_or_path "$MOSLIM_RM" --reward.num_nodes 1 --reward.num_gpus_per_node "$GPUS")
    RUNTIME_ENV='{}'
    ;;
  remote)
    # The reward_func file inside the installed plugin (the same path on every node of a uniform cluster image),
    # unless a running `moslim-openrlhf serve-reward` is named (it loads its own reward model).
    if [[ -n "${MOSLIM_REMOTE_URL:-}" ]]; then
      REWARD_ARGS=(--reward.remote_url "$MOSLIM_REMOTE_URL" --moslim.strict)
    else
      REWARD_ARGS=(--reward.remote_url "$(python3 -m moslim_plugin reward-func-path)"
        --reward.model_name_or_path "$MOSLIM_RM" --moslim.strict)
    fi
    RUNTIME_ENV='{}'
    ;;
  *)
    echo "usage: $0 [inprocess|remote]" >&2
    exit 2
    ;;
esac

# submit ALGORITHM_ARGS...: one `ray job submit` of OpenRLHF's train_ppo_ray through the MOSLIM launcher.
submit() {
  local cmd=(ray job submit --address="$RAY_ADDRESS" --runtime-env-json="$RUNTIME_ENV"
    -- python3 -m moslim_plugin train_ppo_ray "${COMMON_ARGS[@]}" "${REWARD_ARGS[@]}" "$@")
  if [[ -n "${DRY_RUN:-}" ]]; then
    printf '%s\0' "${cmd[@]}"
  else
    "${cmd[@]}"
  fi
}
