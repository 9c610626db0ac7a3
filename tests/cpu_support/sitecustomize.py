"""CPU stand-ins for the CUDA calls of OpenRLHF's PPO loop; active only with MOSLIM_CPU_E2E=1 (tests and benches
put this folder on PYTHONPATH of every process, Ray workers included; GPU users never load it).

Each replacement and why (nothing else of OpenRLHF, DeepSpeed or torch is changed):
- torch.cuda.set_device / synchronize: no-ops; there is no device to select or wait for.
- torch.cuda.current_device: "cpu" (a str, formatted as index 0), so `x.to(current_device())` and
  `device=current_device()` place tensors on the CPU and `torch.device(f"cuda:{current_device()}")` still parses.
- torch.cuda.current_stream: None; only passed on to the weight-sync communicator, which has no streams here.
- torch.distributed.device_mesh.init_device_mesh: a "cuda" mesh is built as a "cpu" mesh (gloo).
- deepspeed.comm.torch.build_shm_op: None, skipping a minutes-long C++ build of a shared-memory all-reduce that a
  one-rank CPU run never uses (DeepSpeed picks its CPU accelerator and gloo by itself without CUDA).
They are applied when the module is first imported, so processes that never import torch (Ray's own) pay nothing.

One observer, no replacement: with MOSLIM_E2E_RECORD=<folder>, RemoteExperienceMaker.make_experience_batch (in the
PPO trainer actor) is wrapped to append every sample it returns to <folder>/trainer-<pid>.jsonl (response tokens,
prompt, label, the reward OpenRLHF stored in info["reward"], the moslim/* info), then returns its result untouched:
the end-to-end tests compare those rewards with the Scorer's.
"""

import importlib.abc
import os
import sys

ENV = "MOSLIM_CPU_E2E"
RECORD_ENV = "MOSLIM_E2E_RECORD"


class CpuDevice(str):
    """torch.cuda.current_device() on CPU: the string "cpu" that formats as 0 inside f"cuda:{...}"."""

    def __format__(self, spec):
        return format(0, spec)


def patch_torch(torch):
    torch.cuda.set_device = lambda device=None: None
    torch.cuda.synchronize = lambda device=None: None
    torch.cuda.current_device = lambda: CpuDevice("cpu")
    torch.cuda.current_stream = lambda device=None: None


def patch_device_mesh(device_mesh):
    original = device_mesh.init_device_mesh

    def init_device_mesh(device_type, *args, **kwargs):
        return original("cpu" if device_type == "cuda" else device_type, *args, **kwargs)

    device_mesh.init_device_mesh = init_device_mesh


def patch_deepspeed_comm(comm_torch):
    comm_torch.build_shm_op = lambda: None


def record_experiences(experience_maker):
    import functools
    import itertools
    import json

    cls = experience_maker.RemoteExperienceMaker
    original, path = cls.make_experience_batch, os.path.join(os.environ[RECORD_ENV], f"trainer-{os.getpid()}.jsonl")
    calls = itertools.count(1)

    @functools.wraps(original)
    def make_experience_batch(self, rollout_samples):
        experiences, call = original(self, rollout_samples), next(calls)
        with open(path, "a") as f:
            for exp in experiences:
                for i in range(len(exp.sequences)):
                    response = exp.sequences[i, 1:][exp.action_mask[i].bool()].tolist()
                    info = {k: float(v[i]) for k, v in exp.info.items() if k.startswith("moslim/") or k == "reward"}
                    row = {"call": call, "prompt": exp.prompts[i], "label": exp.labels[i], "response": response,
                           "reward": info.pop("reward"), "info": info}  # fmt: skip
                    f.write(json.dumps(row) + "\n")
        return experiences

    cls.make_experience_batch = make_experience_batch


AFTER_IMPORT = {
    "torch": patch_torch,
    "torch.distributed.device_mesh": patch_device_mesh,
    "deepspeed.comm.torch": patch_deepspeed_comm,
}


class AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of a module in AFTER_IMPORT to patch it once it has executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in AFTER_IMPORT:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module, patch = spec.loader.exec_module, AFTER_IMPORT.pop(fullname)

        def exec_then_patch(module):
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_then_patch
        return spec


if os.environ.get(ENV) == "1":
    if os.environ.get(RECORD_ENV):
        AFTER_IMPORT["openrlhf.trainer.ppo_utils.experience_maker"] = record_experiences
    sys.meta_path.insert(0, AfterImport())
