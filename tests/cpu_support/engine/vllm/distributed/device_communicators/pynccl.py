"""`vllm.distributed.device_communicators.pynccl.PyNcclCommunicator` with gloo inside: NCCL cannot exist on a CPU
machine. Same constructor and `broadcast(tensor, src, stream)` as vLLM's, over a gloo group of its own built on the
StatelessProcessGroup's store (never torch.distributed's default group, which DeepSpeed owns in the trainer)."""

from datetime import timedelta

import torch.distributed as dist


class PyNcclCommunicator:
    def __init__(self, group, device=None):
        self.rank, self.world_size, self.device = group.rank, group.world_size, device
        store = dist.PrefixStore("moslim-cpu-weight-sync", group.store)
        self._group = dist.ProcessGroupGloo(store, group.rank, group.world_size, timedelta(minutes=10))

    def broadcast(self, tensor, src: int, stream=None):
        self._group.broadcast(tensor, src).wait()
