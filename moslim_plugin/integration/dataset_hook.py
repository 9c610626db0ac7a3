"""The dataset hook: every raw prompt row conditioned on a preference directive and a MOSLIM label as OpenRLHF's
PromptDataset loads it (--moslim.sampling).

Two ways in, the same rows: the runtime patch `prompt_dataset` (patches.py) wraps `PromptDataset.__init__` with
`wrap_prompt_dataset_init`; an OpenRLHF carrying patches/openrlhf-0.11.2-moslim.diff calls `preprocess_row` through
`--data.preprocess_fn`, which the launcher sets.
"""

import functools
import json
from types import SimpleNamespace


def wrap_prompt_dataset_init(original):
    """PromptDataset.__init__ that first passes every raw row through `preprocess_row`, as the diff's patched
    PromptDataset does with `--data.preprocess_fn` (conditioning on a preference directive, --moslim.sampling)."""

    def __init__(self, dataset, tokenizer, strategy, input_template=None, **kwargs):
        moslim = getattr(strategy.args, "moslim", None)
        if moslim is not None and moslim.sampling:
            from tqdm import tqdm

            # Row index = position in the blended dataset: the same index (so the same targets for the same seed)
            # as `prepare-prompts` on the same files, since blending without --data.prompt_probs keeps file order.
            rows = tqdm(dataset, desc="MOSLIM directives", disable=not strategy.is_rank_0())
            dataset = [preprocess_row(row, i, strategy.args) for i, row in enumerate(rows)]
        original(self, dataset, tokenizer, strategy, input_template, **kwargs)

    return __init__


def preprocess_row(row, index, args):
    """The diff's `--data.preprocess_fn moslim_plugin.integration.dataset_hook:preprocess_row`: the row conditioned
    on a preference directive and MOSLIM label (`datasets.condition_row`) when --moslim.sampling is set, else as it
    is."""
    moslim = getattr(args, "moslim", None)
    if moslim is None or not moslim.sampling:
        return row
    from moslim_plugin.data.datasets import condition_row

    key = json.dumps([moslim.spec_dict, moslim.sampling, moslim.seed, moslim.fixed, moslim.columns], sort_keys=True)
    spec, sampler = _cached_sampler(key)
    return condition_row(
        row, spec, sampler, index, args.data.input_key, args.data.label_key, moslim.placement, style=moslim.style
    )


@functools.lru_cache(maxsize=4)
def _cached_sampler(key: str):
    spec_dict, sampling, seed, fixed, columns = json.loads(key)
    return moslim_sampler(
        SimpleNamespace(spec_dict=spec_dict, sampling=sampling, seed=seed, fixed=fixed, columns=columns)
    )


def moslim_sampler(moslim):
    """The spec and TargetSampler described by `args.moslim` (the launcher validated the flags)."""
    from moslim_plugin.core.spec import load_spec
    from moslim_plugin.data.datasets import TargetSampler

    spec = load_spec(moslim.spec_dict)
    return spec, TargetSampler(spec, moslim.sampling, moslim.seed, fixed=moslim.fixed, columns=moslim.columns)
