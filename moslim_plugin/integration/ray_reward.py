"""The MOSLIM reward inside OpenRLHF's Ray training: the reward-model actor and the dispatch that feeds it labels.

Both implement the extension points of `patches/openrlhf-0.11.2-moslim.diff`, at run time, and nothing else:
- the reward group's `forward` also receives `action_mask`, `prompts` and `labels`, and may return `(rewards, info)`,
  whose info OpenRLHF logs like every info key (patch `make_experience`: `wrap_make_experience`);
- the reward-model actor class is pluggable (`--reward.actor_class` in the diff; patch `reward_actor` here).
`MoslimRewardModelActor` is that class in both worlds. On a MOSLIM checkpoint (`is_moslim_checkpoint`) it scores
with a `RewardEngine` built from `args.moslim.reward`, the launcher's validated `RewardConfig`; on any other
checkpoint it is the stock actor and ignores the new arguments, as the diff's stock actor does.

Samples are turned into (question, response, targets) exactly as on the remote-reward path (`RewardEngine`): the
policy's tokens are decoded with the POLICY tokenizer into OpenRLHF's query text, split against the prompt, and the
Scorer re-tokenises with the RM's own tokenizer; the targets come from the label, never from the (possibly
truncated) text. So the in-process and the remote reward of a sample are the same number. Unlike the remote path,
a sample that cannot be scored stops the run: nothing here swallows the error.
"""

import functools

import ray
import torch
from openrlhf.trainer.ray.launcher import RewardModelActor

from moslim_plugin.core.rm import is_moslim_checkpoint
from moslim_plugin.integration.reward_engine import ERRORS_KEY

# The class under OpenRLHF's @ray.remote decorator: we extend it, so non-MOSLIM checkpoints keep the stock behaviour.
StockRewardModelActor = RewardModelActor.__ray_actor_class__
DTYPES = ("bf16", "fp16")


@ray.remote(num_gpus=1)
class MoslimRewardModelActor(StockRewardModelActor):
    engine = None  # the RewardEngine when a MOSLIM checkpoint is loaded

    def init_model_from_pretrained(self, strategy, pretrain):
        if not is_moslim_checkpoint(pretrain):
            return super().init_model_from_pretrained(strategy, pretrain)
        import dataclasses

        from transformers import AutoTokenizer

        from moslim_plugin.integration.reward_engine import build_engine

        args = strategy.args
        config = getattr(getattr(args, "moslim", None), "reward", None)
        if config is None:
            raise RuntimeError(
                f"{pretrain} is a MOSLIM reward model but args.moslim.reward is missing: start training with "
                "`moslim-openrlhf train_ppo_ray`, which adds the validated MOSLIM reward configuration to the args"
            )
        # No DeepSpeed engine (and so no torch.distributed group): each rank scores its own chunk with a whole copy
        # of the RM, which is small next to the policy. Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU.
        self.strategy = strategy
        cuda = torch.cuda.is_available()
        # bf16 backward-free inference is fine on GPU; on CPU fp32 is both exact and faster.
        dtype = config.dtype or (args.ds.param_dtype if cuda and args.ds.param_dtype in DTYPES else "fp32")
        device = config.device or ("cuda" if cuda else "cpu")
        # In-process, a sample that cannot be scored always stops the run (strict), whatever the remote paths do.
        config = dataclasses.replace(config, rm_path=pretrain, strict=True, device=device, dtype=dtype)
        self.engine = build_engine(config)
        self.policy_tokenizer = AutoTokenizer.from_pretrained(args.actor.model_name_or_path, trust_remote_code=False)
        names = list(self.engine.spec.names)
        strategy.print(f"MOSLIM reward model {pretrain}: objectives {names}, {device} {dtype}, {self.engine.config}")

    def forward(
        self, sequences, attention_mask=None, packed_seq_lens=None, pad_sequence=False, action_mask=None, prompts=None,
        labels=None,
    ):  # fmt: skip
        """Stock checkpoint: OpenRLHF's rewards. MOSLIM: (rewards [B] fp32, per-sample diagnostics {key: [B]})."""
        if self.engine is None:
            return super().forward(sequences, attention_mask, packed_seq_lens, pad_sequence)
        if labels is None:
            raise RuntimeError(
                "the MOSLIM reward model was asked for a reward from token ids alone, without the samples' labels: "
                "the `make_experience` patch is not active in the PPO trainer process (was the Ray job started with "
                "`moslim-openrlhf train_ppo_ray`, whose worker setup hook applies it?)"
            )
        # OpenRLHF's remote path decodes prompt + response with special tokens kept; so do we (same query text).
        queries = [
            self.policy_tokenizer.decode(seq[mask.bool()].tolist(), skip_special_tokens=False)
            for seq, mask in zip(sequences, attention_mask)
        ]
        outcomes = self.engine.score_samples(list(zip(queries, prompts, labels)))
        failures = [f"sample {i}: {reason}" for i, (reward, reason) in enumerate(outcomes) if reward is None]
        if failures:
            raise RuntimeError(
                f"MOSLIM reward failed for {len(failures)} of {len(outcomes)} samples: " + "; ".join(failures)
            )
        rewards = torch.tensor([reward for reward, _ in outcomes], dtype=torch.float32)
        # Every micro-batch carries every key (OpenRLHF merges info key by key); an objective a sample did not
        # request logs 0 there, as on the remote path.
        keys = [key for key in self.engine.log_keys if key != ERRORS_KEY]
        info = {key: torch.tensor([logs.get(key, 0.0) for _, logs in outcomes], dtype=torch.float32) for key in keys}
        return rewards, info

    def empty_cache(self) -> None:
        if torch.cuda.is_available():
            super().empty_cache()


def replace_reward_actor(original):
    if original is not RewardModelActor:
        raise RuntimeError(f"expected OpenRLHF's RewardModelActor, found {original!r}: another patch replaced it")
    return MoslimRewardModelActor


def wrap_make_experience(original):
    """OpenRLHF's make_experience as the diff changes it, without copying it: for the duration of the call, the
    reward group's batched `forward` also gets each micro-batch's action_mask, prompts and labels, and
    `_flatten_results` splits `(rewards, info)` results, whose info is added to the samples' info afterwards."""

    @functools.wraps(original)
    def make_experience(self, samples_list):
        group = self.reward_model_group
        if group is None or samples_list[0].rewards is not None:
            return original(self, samples_list)
        infos = []

        def run_method_batch(method_name, **kwargs):
            if method_name == "forward":
                kwargs.update(
                    action_mask=[s.action_mask for s in samples_list],
                    prompts=[s.prompts for s in samples_list],
                    labels=[s.labels for s in samples_list],
                )
            return type(group).async_run_method_batch(group, method_name=method_name, **kwargs)

        def flatten_results(refs, duplicate_factor):
            results = type(self)._flatten_results(self, refs, duplicate_factor)
            if results and isinstance(results[0], tuple):  # only the reward model returns (rewards, info)
                infos.extend(info for _, info in results)
                return [rewards for rewards, _ in results]
            return results

        group.async_run_method_batch, self._flatten_results = run_method_batch, flatten_results
        try:
            samples_list = original(self, samples_list)
        finally:
            del group.async_run_method_batch, self._flatten_results
        for samples, info in zip(samples_list, infos):
            if not torch.isfinite(samples.rewards).all():
                raise RuntimeError(f"MOSLIM reward model returned non-finite rewards {samples.rewards.tolist()}")
            samples.info.update(info)
        return samples_list

    return make_experience
