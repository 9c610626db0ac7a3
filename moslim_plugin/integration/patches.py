"""Every runtime change the plugin makes to OpenRLHF, each declared, fingerprinted and reversible.

OpenRLHF 0.11.2 has no extension points for what MOSLIM needs (a reward model that sees the prompt's labels, a
dataset preprocessing hook, a pluggable reward-model actor), so the plugin wraps or replaces three of its objects
(and the launcher a fourth, `hierarchize`).
Each `Patch` names its target (`module:qualname`), the OpenRLHF versions it was written for, the sha256 of the
upstream source it wraps (`inspect.getsource`), why no public extension point exists, the upstream change that
would make it unnecessary and when to remove it. A version or fingerprint mismatch is an error (upstream changed
under us: the wrapper may be wrong) unless MOSLIM_ALLOW_UNSUPPORTED_OPENRLHF=1. `patches/openrlhf-0.11.2-moslim.diff`
is the same change as the upstream proposal.

With `MOSLIM_RUNTIME_PATCHES=0` nothing is patched: for an OpenRLHF that carries the diff.

`apply_on_import()` (called by the activation hook in the driver and in every Ray worker) applies each patch when
OpenRLHF imports its module, or at once if it is already imported: a worker that never imports the module (vLLM
engines, plain tasks) pays nothing and never imports torch. This module itself stays import-light for that reason.
"""

import hashlib
import importlib
import importlib.abc
import importlib.metadata
import inspect
import os
import sys
import threading
import warnings
from dataclasses import dataclass

from moslim_plugin import SUPPORTED_OPENRLHF

ALLOW_ENV = "MOSLIM_ALLOW_UNSUPPORTED_OPENRLHF"
# "0": OpenRLHF already carries patches/openrlhf-0.11.2-moslim.diff (its extension points): patch nothing at run time.
RUNTIME_ENV = "MOSLIM_RUNTIME_PATCHES"


class PatchError(RuntimeError):
    """OpenRLHF is not the release (or the source) a patch was written for."""


@dataclass(frozen=True)
class Patch:
    name: str
    target: str  # "package.module:Class.attribute"
    fingerprint: str  # sha256 of inspect.getsource() of the upstream object
    make: str  # "module:function"; function(original) -> replacement
    why: str
    upstream: str
    remove_when: str
    versions: tuple = SUPPORTED_OPENRLHF

    @property
    def module(self) -> str:
        return self.target.split(":")[0]

    def resolve(self):
        """(owner, attribute, current value) of the target; the owner is a module or a class."""
        module_name, qualname = self.target.split(":")
        owner = importlib.import_module(module_name)
        *path, attribute = qualname.split(".")
        for part in path:
            owner = getattr(owner, part)
        return owner, attribute, owner.__dict__[attribute] if isinstance(owner, type) else getattr(owner, attribute)

    def check(self, original) -> None:
        """Refuse to patch a release or a source the wrapper was not written for (overridable, with a warning)."""
        problems = []
        version = openrlhf_version()
        if version not in self.versions:
            problems.append(f"installed OpenRLHF is {version}, this patch supports {', '.join(self.versions)}")
        actual = source_fingerprint(original)
        if actual != self.fingerprint:
            problems.append(
                f"the source of {self.target} changed (sha256 {actual[:16]}..., expected {self.fingerprint[:16]}...)"
            )
        if not problems:
            return
        message = f"MOSLIM patch {self.name!r} ({self.target}): " + "; ".join(problems)
        if os.environ.get(ALLOW_ENV) == "1":
            warnings.warn(f"{message}; applying anyway because {ALLOW_ENV}=1", stacklevel=3)
            return
        raise PatchError(
            f"{message}. The plugin wraps this code and may now be wrong: install openrlhf=={self.versions[-1]}, or "
            f"review the wrapper against the new source and set {ALLOW_ENV}=1 to run anyway"
        )


def openrlhf_version() -> str:
    return importlib.metadata.version("openrlhf")


def source_fingerprint(obj) -> str:
    # A @ray.remote class is an ActorClass wrapper; the source is that of the class it wraps.
    obj = getattr(obj, "__ray_actor_class__", obj)
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


PATCHES = (
    Patch(
        name="make_experience",
        target="openrlhf.trainer.ppo_utils.experience_maker:RemoteExperienceMaker.make_experience",
        fingerprint="85db1fe426dec3e6e9bb740e663f4cee8f1bfdedd3fc0f5d61a4c68fee0b8f67",
        make="moslim_plugin.integration.ray_reward:wrap_make_experience",
        why="the reward-model dispatch sends only token ids (sequences, attention_mask); the MOSLIM reward needs each "
        "sample's target levels, which travel in Experience.labels and never reach the reward-model actor",
        upstream="pass prompts and labels to the reward group's forward (see patches/openrlhf-0.11.2-moslim.diff)",
        remove_when="OpenRLHF's RemoteExperienceMaker sends Experience.prompts/labels to the reward model",
    ),
    Patch(
        name="prompt_dataset",
        target="openrlhf.datasets.prompts_dataset:PromptDataset.__init__",
        fingerprint="068a62107852403824a094eca76d18f2a2decc8cbece573efc435771c03da85e",
        make="moslim_plugin.integration.dataset_hook:wrap_prompt_dataset_init",
        why="PromptDataset is built inside the PPOTrainer Ray actor from the raw rows, with no hook between loading a "
        "row and templating it, so the preference directive and label cannot be added on the fly",
        upstream="a row-preprocessing hook (e.g. --data.preprocess_fn module:function) applied in PromptDataset",
        remove_when="OpenRLHF's PromptDataset accepts a row-preprocessing function",
    ),
    Patch(
        name="reward_actor",
        target="openrlhf.trainer.ray.launcher:RewardModelActor",
        fingerprint="ca80c418316a284b482fe0766002061c9f01672e8e0a42523036194eff4fb61c",
        make="moslim_plugin.integration.ray_reward:replace_reward_actor",
        why="train_ppo_ray hard-codes RewardModelActor (a scalar-head reward model) and imports it by name",
        upstream="a --reward.actor_class module:Class flag (pluggable reward-model actor)",
        remove_when="OpenRLHF lets the reward-model actor class be chosen from the command line",
    ),
)
# Applied by the launcher only (driver), with the parsed --moslim.* flags bound in: see launcher.py. With the diff
# (runtime patching off) the entry point launcher:add_arguments does the same through the diff's parser hook.
HIERARCHIZE = Patch(
    name="hierarchize",
    target="openrlhf.utils.config:hierarchize",
    fingerprint="76aa82b2af592f581039dab0740783555a2c0f49dda01a54989edcfb185191b3",
    make="moslim_plugin.integration.launcher:wrap_hierarchize",
    why="train_ppo_ray builds its parser inline under `if __name__ == '__main__'` and rejects unknown flags; "
    "hierarchize(args) is the one call between parse_args() and train() where args.moslim can be added",
    upstream="an entry-point group through which plugins add arguments to the train_ppo_ray parser and check "
    "the hierarchized args before train()",
    remove_when="train_ppo_ray exposes its parser (build_parser()) or a plugin hook for extra flags",
)

# name -> (owner, attribute, original) of each applied patch; the lock covers concurrent imports in threaded actors.
_applied: dict[str, tuple] = {}
_lock = threading.RLock()


def apply(patch: Patch, make=None) -> None:
    """Apply one patch now (idempotent). `make` overrides the record's replacement factory (tests, launcher)."""
    with _lock:
        if patch.name in _applied:
            return
        owner, attribute, original = patch.resolve()
        patch.check(original)
        if make is None:
            module_name, function = patch.make.split(":")
            make = getattr(importlib.import_module(module_name), function)
        replacement = make(original)
        replacement.__moslim_patch__ = patch.name
        setattr(owner, attribute, replacement)
        _applied[patch.name] = (owner, attribute, original)


def revert(*names: str) -> None:
    """Put the originals of the named patches (default: all) back; with no names, also stop patching on import."""
    with _lock:
        for name in names or list(_applied):
            if name in _applied:
                owner, attribute, original = _applied.pop(name)
                setattr(owner, attribute, original)
        if not names:
            _pending.clear()
            if _FINDER in sys.meta_path:
                sys.meta_path.remove(_FINDER)


def applied() -> list[str]:
    return sorted(_applied)


# module name -> patches waiting for that module to be imported
_pending: dict[str, list[Patch]] = {}


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when a pending module is found by the other finders, runs its patches after exec.

    Another finder built the same way (asking every other finder, this one included) would send the two into each
    other forever: while this one is searching for a module, it answers None for that module."""

    def __init__(self):
        self.searching = set()

    def find_spec(self, fullname, path, target=None):
        if fullname not in _pending or fullname in self.searching:
            return None
        self.searching.add(fullname)
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self.searching.discard(fullname)
        exec_module = spec.loader.exec_module

        def exec_then_patch(module):
            try:
                exec_module(module)
            finally:
                del spec.loader.exec_module  # loaders can be shared: leave no trace on this one
            # A patch leaves the pending list only once applied: a refused one (PatchError) fails this import, and
            # Python forgets the half-imported module, so every later import runs the check again and fails again,
            # instead of handing out unpatched OpenRLHF.
            for patch in list(_pending.get(fullname, [])):
                apply(patch)
                _pending[fullname].remove(patch)
            if not _pending.get(fullname, True):
                del _pending[fullname]

        spec.loader.exec_module = exec_then_patch
        return spec


_FINDER = _PatchOnImport()


def apply_on_import(patches=PATCHES) -> None:
    """Apply each patch now if its module is imported, else right after OpenRLHF imports it (idempotent)."""
    if os.environ.get(RUNTIME_ENV, "1") == "0":
        return
    with _lock:
        for patch in patches:
            if patch.name in _applied:
                continue
            if patch.module in sys.modules:
                apply(patch)
            elif patch not in _pending.setdefault(patch.module, []):
                _pending[patch.module].append(patch)
        if _pending and _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)
