"""`vllm.distributed.utils.StatelessProcessGroup`: a TCP store shared by the trainer's rank 0 and the engines' workers,
outside torch.distributed's default group (as vLLM's is), for the weight-sync group OpenRLHF builds on it."""

from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist


@dataclass
class StatelessProcessGroup:
    rank: int
    world_size: int
    store: dist.Store

    @staticmethod
    def create(host: str, port: int, rank: int, world_size: int, data_expiration_seconds: int = 3600,
               store_timeout: int = 300) -> "StatelessProcessGroup":  # fmt: skip
        store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timedelta(seconds=store_timeout))
        return StatelessProcessGroup(rank, world_size, store)
