"""TorchStrategy: the part of OpenRLHF's DeepspeedStrategy the RM training loops use, in plain fp32 torch (AdamW),
for machines without CUDA (or one GPU without a launcher: `train-rm --device cuda`). `train_rm` and the benchmarks
run OpenRLHF's own loops on it."""

import math
import os
import random
import shutil

import torch


class TorchStrategy:
    """The part of OpenRLHF's DeepspeedStrategy the RM loops use, in plain torch, for machines without CUDA.

    Same calls (prepare, backward, optimizer_step, save_ckpt/load_ckpt, setup_dataloader, all_reduce, print) and the
    same gradient accumulation (batch_size // micro_batch_size micro-steps per optimizer step) and scheduler as the
    DeepSpeed engine, so one training loop serves both. Its checkpoints also hold the RNG states: a resumed run
    draws the same dropout masks as an uninterrupted one.
    """

    def __init__(self, args):
        self.args = args
        self.seed = args.train.seed
        self.max_norm = args.max_norm
        self.accumulated_gradient = max(1, args.train.batch_size // args.train.micro_batch_size)
        self.ring_attn_group = None
        self.world_size = 1
        self.micro_steps = 0
        self.grad_norm = 0.0

    def setup_distributed(self):
        import transformers

        transformers.set_seed(self.seed)

    def prepare(self, model_and_cfg):
        from transformers.trainer import get_scheduler

        model, cfg = model_and_cfg
        adam = cfg["adam"]
        decay = [p for n, p in model.named_parameters() if p.requires_grad and not _no_decay(n)]
        no_decay = [p for n, p in model.named_parameters() if p.requires_grad and _no_decay(n)]
        groups = [{"params": decay, "weight_decay": adam["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=adam["lr"], betas=tuple(adam["betas"]), eps=adam["eps"])
        steps = cfg["scheduler_steps"]
        kwargs = {"min_lr_rate": cfg["min_lr_ratio"]} if "min_lr" in cfg["lr_scheduler"] else {}
        self.scheduler = get_scheduler(
            cfg["lr_scheduler"],
            self.optimizer,
            num_warmup_steps=math.ceil(steps * cfg["lr_warmup_ratio"]),
            num_training_steps=steps,
            scheduler_specific_kwargs=kwargs,
        )
        self.max_norm = cfg["max_norm"]
        self.model = model
        return model, self.optimizer, self.scheduler

    def backward(self, loss, model, optimizer):
        (loss / self.accumulated_gradient).backward()

    def optimizer_step(self, optimizer, model, scheduler):
        self.micro_steps += 1
        if self.micro_steps % self.accumulated_gradient:
            return
        params = [p for p in model.parameters() if p.grad is not None]
        self.grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_norm or float("inf")))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

    def get_grad_norm(self, model):
        return self.grad_norm

    def setup_dataloader(
        self,
        dataset,
        batch_size,
        pin_memory=False,
        shuffle=True,
        collate_fn=None,
        drop_last=True,
        sampler=None,
        consumed_samples=0,
        num_workers=0,
    ):
        from openrlhf.utils.distributed_sampler import DistributedSampler

        sampler = sampler or DistributedSampler(
            dataset,
            num_replicas=1,
            rank=0,
            shuffle=shuffle,
            seed=self.seed,
            drop_last=drop_last,
            consumed_samples=consumed_samples,
        )
        # Its own generator: creating an iterator must not draw from the global RNG (the dropout masks).
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            collate_fn=collate_fn,
            num_workers=num_workers,
            generator=torch.Generator(),
        )

    def _unwrap_model(self, model):
        return model

    def all_reduce(self, data, op="mean"):
        return data

    def all_gather(self, data):
        return data if isinstance(data, torch.Tensor) else torch.tensor([data])

    def print(self, *msg):
        print(*msg)

    def is_rank_0(self):
        return True

    def save_ckpt(self, model, save_dir, tag=None, max_num=3, max_mem=1000, client_state=None, **kwargs):
        os.makedirs(os.path.join(save_dir, tag), exist_ok=True)
        state = {
            "model": model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "micro_steps": self.micro_steps,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            "client_state": client_state or {},
        }
        # Written to a temporary name and renamed: a kill during the save leaves no half-written state.pt behind.
        path = os.path.join(save_dir, tag, "state.pt")
        torch.save(state, path + ".tmp")
        os.replace(path + ".tmp", path)
        with open(os.path.join(save_dir, "latest"), "w") as f:
            f.write(tag)
        tags = sorted(
            (d for d in os.listdir(save_dir) if os.path.isfile(os.path.join(save_dir, d, "state.pt"))),
            key=lambda d: os.path.getmtime(os.path.join(save_dir, d)),
        )
        for old in tags[: max(0, len(tags) - max_num)]:
            shutil.rmtree(os.path.join(save_dir, old))

    def load_ckpt(self, model, load_dir, tag=None, **kwargs):
        latest = os.path.join(load_dir, "latest")
        if tag is None and not os.path.isfile(latest):
            self.print(f"Warning: no checkpoint found at {load_dir}, starting from scratch.")
            return None, {}
        tag = tag or open(latest).read().strip()
        path = os.path.join(load_dir, tag, "state.pt")
        # weights_only: the file holds tensors, numbers and RNG states only; never unpickle arbitrary objects.
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.micro_steps = state["micro_steps"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        return path, state["client_state"]


# openrlhf/utils/deepspeed/deepspeed_utils.py: get_optimizer_grouped_parameters' list, copied because importing that
# module imports deepspeed (tens of seconds on CPU) for four lines.
NO_DECAY_NAMES = ("bias", "layer_norm.weight", "layernorm.weight", "norm.weight", "ln_f.weight")


def _no_decay(name: str) -> bool:
    return any(nd in name for nd in NO_DECAY_NAMES)
