"""The policy on one machine: loaded in fp32 with only its top layers (or LoRA adapters) trainable, copied for
sampling as OpenRLHF's vLLM engines sample, and asked for responses.

`generate` samples with the KV-cached loop of `rollout.decode` (HF `generate`'s sampling semantics); `rollout_copy`
is the copy of the policy that plays vLLM's part in the RL driver (`local_rl.py`): bf16 by default, eager attention,
the trained weights copied in after every update.
"""

import copy
import json
from pathlib import Path

import torch
from tqdm import tqdm

ROLLOUT_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def torch_device(name: str) -> torch.device:
    """--device as a torch device: `cuda` on a machine whose torch sees no GPU is a one-line user error.

    On cuda the weights stay fp32 and matmuls run in TF32. Pure bf16 weights would drop most AdamW steps: at the
    demo's lr most of SmolLM2's top-layer weights round back to themselves after a step in bf16
    (bench/device/README.md). A 135M model on a GPU is bound by kernel launches, so fp32 costs no time."""
    from moslim_plugin import UserError

    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this torch build sees no CUDA device; use --device cpu")
    if name == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32
    return torch.device(name)


def load_policy(path, trainable_layers: int = -1, lora=None, device: str = "cpu"):
    """fp32 HF causal LM on `device` + left-padding tokenizer; freezes all but the top
    `trainable_layers` decoder layers.

    `lora` (OpenRLHF's `args.ds.lora`: rank, alpha, dropout, target_modules) with rank > 0 wraps the model in peft
    LoRA adapters as OpenRLHF's Actor does, placed in those top layers only (all layers for -1), and trains only the
    adapters. A LoRA checkpoint (a folder with adapter_config.json, what `save_pretrained` writes for it) loads onto
    its base model merged, so evaluation and the next stage get a plain model."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from moslim_plugin import UserError

    path = str(path)
    if not Path(path, "config.json").is_file() and not Path(path, "adapter_config.json").is_file():
        # Without this, transformers takes the string for a hub name and fails far from the user's mistake.
        raise UserError(f"policy {path!r}: not a model folder (no config.json or adapter_config.json)")
    adapter = Path(path, "adapter_config.json")
    # The base of a LoRA checkpoint may itself be one: merge down the chain.
    base = load_policy(json.loads(adapter.read_text())["base_model_name_or_path"])[0] if adapter.exists() else None
    try:  # what transformers raises for a folder that is no causal LM (bad config, no weights, another model type)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        if base is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(base, path).merge_and_unload()
            model.name_or_path = path  # what a new adapter on this model records as its base
        else:
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch.float32, trust_remote_code=False, use_safetensors=True
            )
    except (OSError, ValueError, SafetensorError) as e:
        raise UserError(f"policy {path!r}: cannot be loaded as a causal LM ({type(e).__name__}: {e})") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        raise UserError(f"{path}: the tokenizer has no pad token; set one (e.g. the eos token) and save it")
    model.to(torch_device(device))
    n_layers = len(model.model.layers)
    if trainable_layers > n_layers:
        raise UserError(f"--moslim.trainable_layers {trainable_layers}: the model has {n_layers} layers")
    top = range(n_layers - trainable_layers if trainable_layers >= 0 else 0, n_layers)
    if lora is not None and lora.rank > 0:
        from peft import LoraConfig, TaskType, get_peft_model

        if not top:
            raise UserError("--ds.lora.rank > 0 with --moslim.trainable_layers 0: no layer to put adapters in")
        targets = lora.target_modules
        if targets == "all-linear":  # spelled out: peft takes layers_to_transform only with a list of names
            linear = [n for n, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear)]
            targets = sorted({n.rsplit(".", 1)[-1] for n in linear})
        config = LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=lora.rank, lora_alpha=lora.alpha, target_modules=list(targets),
            lora_dropout=lora.dropout, bias="none", layers_to_transform=list(top),
        )  # fmt: skip
        return get_peft_model(model, config), tokenizer  # peft freezes everything but the adapters
    if trainable_layers >= 0:
        model.requires_grad_(False)
        for i in top:
            model.model.layers[i].requires_grad_(True)
        model.model.norm.requires_grad_(True)
    return model, tokenizer


def rollout_copy(model, dtype: str):
    """The copy of the policy that samples the rollouts (vLLM's part, see the module docstring), in `dtype` (a
    ROLLOUT_DTYPES key). Eager attention: SDPA's CPU kernel costs 1-3 ms per layer for one query token, more than the
    layer's matmuls at 32 rows (bench/bench_rollout.py). `update_step` copies the trained weights in."""
    rollout_model = copy.deepcopy(model).to(ROLLOUT_DTYPES[dtype]).eval().requires_grad_(False)
    rollout_model.set_attn_implementation("eager")
    return rollout_model


def generate(model, tokenizer, messages_list, max_new_tokens, temperature=1.0, top_p=1.0, batch_size=16, desc=None):
    """Sample one response per chat, `batch_size` sequences per forward, with the KV-cached loop of `rollout.decode`
    (HF `generate`'s temperature / top-p semantics; temperature 0 is its greedy). Identical chats (the n samples of
    one prompt) share one prefill; chats are batched by prompt length to cut left padding.
    Returns (prompt_ids list, response_ids list, texts) in the order of `messages_list`."""
    from moslim_plugin import UserError
    from moslim_plugin.demo.rollout import decode

    if temperature < 0 or not 0 < top_p <= 1:
        raise UserError(f"temperature {temperature}, top_p {top_p}: expected temperature >= 0 and 0 < top_p <= 1")
    prompts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages_list]
    where = {}  # prompt text -> the positions in messages_list that ask for it
    for i, text in enumerate(prompts):
        where.setdefault(text, []).append(i)
    encoded = {text: tokenizer(text, add_special_tokens=False).input_ids for text in where}
    order = sorted(where, key=lambda text: len(encoded[text]))
    prompt_ids, response_ids = [None] * len(prompts), [None] * len(prompts)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), desc=desc or "generate", disable=desc is False, leave=False)
    while order:
        # Whole prompts (all their copies) per batch, so each prompt is prefilled once; one prompt may exceed it.
        chunk, rows = [], 0
        while order and (not chunk or rows + len(where[order[0]]) <= batch_size):
            chunk.append(order.pop(0))
            rows += len(where[chunk[-1]])
        responses = decode(
            model, [encoded[t] for t in chunk], [len(where[t]) for t in chunk], max_new_tokens, temperature, top_p,
            tokenizer.eos_token_id, tokenizer.pad_token_id,
        )  # fmt: skip
        slots = [i for t in chunk for i in where[t]]
        for i, ids in zip(slots, responses):
            prompt_ids[i], response_ids[i] = list(encoded[prompts[i]]), ids
        bar.update(rows)
    bar.close()
    model.train(was_training)
    texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in response_ids]
    return prompt_ids, response_ids, texts
