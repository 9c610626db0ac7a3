"""Plugin activation, run in the OpenRLHF driver (by the launcher) and in every Ray worker process.

Ray runs `WORKER_SETUP_HOOK` in each worker before any task or actor code (the launcher declares it in the job's
runtime env). It runs every activation declared in the `moslim_plugin.plugins` entry-point group, ours included
(see pyproject.toml), so other packages can hook into the same workers. Ours only registers the OpenRLHF patches to
be applied when OpenRLHF imports the patched modules: cheap (no torch import) in workers that never use them, and
idempotent, so the driver and a worker that runs the hook twice end up in the same state.

On machines without flash-attn (CPU test machines), `import openrlhf.models` needs `integration.compat`'s shim in every
worker that imports it; a last-resort import finder installs it on first use, for the same reason: a worker
that never imports OpenRLHF's models never imports torch.
"""

import importlib.abc
import importlib.metadata
import importlib.util
import sys

ENTRY_POINT_GROUP = "moslim_plugin.plugins"
WORKER_SETUP_HOOK = (
    "moslim_plugin.integration.activate.activate_all"  # a dotted path: the form Ray's setup-hook loader imports
)

_activated = False


def activate() -> None:
    """The plugin's own activation: the patches of moslim_plugin/integration/patches.py, applied on import."""
    from moslim_plugin.integration import patches

    patches.apply_on_import()
    if "flash_attn" not in sys.modules and _SHIM_FINDER not in sys.meta_path:
        sys.meta_path.append(_SHIM_FINDER)  # last: a real flash-attn is always found first


class _FlashAttnShimFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Reached only if no other finder has flash_attn: installs compat's shim and hands out its module."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "flash_attn":
            return None
        sys.meta_path.remove(self)  # compat.install() itself looks for a real flash_attn first
        from moslim_plugin.integration import compat

        if not compat.install():
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return sys.modules[spec.name]

    def exec_module(self, module):
        pass


_SHIM_FINDER = _FlashAttnShimFinder()


def activate_all() -> None:
    """Run every activation of the entry-point group once per process (ours even if the package is not installed)."""
    global _activated
    if _activated:
        return
    activate()
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry_point.load()()
    _activated = True
