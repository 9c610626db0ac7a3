"""CPU stand-ins for what OpenRLHF's PPO loop needs from a GPU, and two observers. The end-to-end tests and benches
put this folder on PYTHONPATH of every process, Ray workers included; GPU users never load it.

Replacements, only with MOSLIM_CPU_E2E=1, each with why (nothing else of OpenRLHF, DeepSpeed or torch is changed):
- vllm: `engine/vllm`, put first on sys.path here: vLLM's engine API over transformers (see its docstring).
- torch.cuda.set_device / synchronize: no-ops; there is no device to select or wait for.
- torch.cuda.current_device: "cpu" (a str, formatted as index 0), so `x.to(current_device())` and
  `device=current_device()` place tensors on the CPU and `torch.device(f"cuda:{current_device()}")` still parses.
- torch.cuda.current_stream: None; only passed on to the weight-sync communicator, which has no streams here.
- torch.distributed.device_mesh.init_device_mesh: a "cuda" mesh is built as a "cpu" mesh (gloo).
- deepspeed.comm.torch.build_shm_op: None, skipping a minutes-long C++ build of a shared-memory all-reduce that a
  one-rank CPU run never uses (DeepSpeed picks its CPU accelerator and gloo by itself without CUDA).
They are applied when the module is first imported, so processes that never import torch (Ray's own) pay nothing.
Seeded, with the replacements: torch's global generator, to 0 when torch is imported. OpenRLHF's PPO trainer actor
shuffles the prompts with it (no torch.distributed there, so not with its seeded DistributedSampler), and torch seeds
it at random in every process: two runs of the same command would see the prompts in different orders, whatever
--train.seed says. The resume test compares with an uninterrupted run, which needs the same order.

Observers, no replacement, with MOSLIM_E2E_RECORD=<folder> (with or without the replacements): two methods of
RemoteExperienceMaker (in the PPO trainer actor) are wrapped to record, and return their results untouched:
make_experience_batch appends every sample it returns to <folder>/trainer-<pid>.jsonl (response tokens, prompt,
label, the reward OpenRLHF stored in info["reward"], the moslim/* info), which the end-to-end tests compare with the
Scorer's rewards; _dispatch_forward appends the reward model's wall time per batch to <folder>/timing-<pid>.jsonl,
for the reward-cost bench.
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
    torch.manual_seed(0)  # see "Seeded" above
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
    import time

    cls, folder, pid = experience_maker.RemoteExperienceMaker, os.environ[RECORD_ENV], os.getpid()
    make_experience_batch, dispatch_forward = cls.make_experience_batch, cls._dispatch_forward
    calls = itertools.count(1)

    @functools.wraps(make_experience_batch)
    def recorded_make_experience_batch(self, rollout_samples):
        experiences, call = make_experience_batch(self, rollout_samples), next(calls)
        with open(os.path.join(folder, f"trainer-{pid}.jsonl"), "a") as f:
            for exp in experiences:
                for i in range(len(exp.sequences)):
                    response = exp.sequences[i, 1:][exp.action_mask[i].bool()].tolist()
                    info = {k: float(v[i]) for k, v in exp.info.items() if k.startswith("moslim/") or k == "reward"}
                    row = {"call": call, "prompt": exp.prompts[i], "label": exp.labels[i], "response": response,
                           "reward": info.pop("reward"), "info": info}  # fmt: skip
                    f.write(json.dumps(row) + "\n")
        return experiences

    @functools.wraps(dispatch_forward)
    def timed_dispatch_forward(self, group, sync_condition, **kwargs):
        # With sync_condition (colocated models) the call returns once the group is done: its wall time is the
        # reward model's time in the step.
        start = time.perf_counter()
        refs = dispatch_forward(self, group, sync_condition, **kwargs)
        if group is self.reward_model_group and sync_condition:
            with open(os.path.join(folder, f"timing-{pid}.jsonl"), "a") as f:
                f.write(json.dumps({"reward_seconds": time.perf_counter() - start}) + "\n")
        return refs

    cls.make_experience_batch, cls._dispatch_forward = recorded_make_experience_batch, timed_dispatch_forward


AFTER_IMPORT = {
    "torch": patch_torch,
    "torch.distributed.device_mesh": patch_device_mesh,
    "deepspeed.comm.torch": patch_deepspeed_comm,
}


class AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: a module in AFTER_IMPORT, found by the other finders, is patched once it has executed.
    It answers None for a module it is already searching (the plugin's patch finder also asks every finder)."""

    searching = set()

    def find_spec(self, fullname, path, target=None):
        if fullname not in AFTER_IMPORT or fullname in self.searching:
            return None
        self.searching.add(fullname)
        try:
            for finder in sys.meta_path:
                if finder is not self and hasattr(finder, "find_spec"):
                    spec = finder.find_spec(fullname, path, target)
                    if spec is not None:
                        spec.loader = PatchingLoader(spec.loader, AFTER_IMPORT.pop(fullname))
                        return spec
            return None
        finally:
            self.searching.discard(fullname)


class PatchingLoader(importlib.abc.Loader):
    """The module's own loader, then the patch; everything else (get_source, ...) is the original loader's."""

    def __init__(self, loader, patch):
        self.loader, self.patch = loader, patch

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        self.patch(module)

    def __getattr__(self, name):
        return getattr(self.loader, name)


if os.environ.get(ENV) != "1":  # the observers alone (bench/device runs them with the real vLLM)
    for name in ("torch", "torch.distributed.device_mesh", "deepspeed.comm.torch"):
        del AFTER_IMPORT[name]
else:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "engine"))
if os.environ.get(RECORD_ENV):
    AFTER_IMPORT["openrlhf.trainer.ppo_utils.experience_maker"] = record_experiences
if AFTER_IMPORT:
    sys.meta_path.insert(0, AfterImport())
