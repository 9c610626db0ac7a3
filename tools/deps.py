"""Print the pip requirements for a machine without CUDA, one per line (used by `make setup`).

With --no-deps: the packages to install without their own requirements instead.

stdlib only: it runs before anything is installed. OpenRLHF 0.11.2 requires flash-attn (CUDA-only), so `make setup`
installs OpenRLHF with --no-deps and then everything below: our own dependencies and extras from pyproject.toml
plus OpenRLHF's own requirements (read from its installed metadata, so nothing is copied by hand) minus the
CUDA-only ones.
"""

import importlib.metadata
import re
import sys
from pathlib import Path

import tomllib

CUDA_ONLY = {"flash-attn", "vllm", "bitsandbytes", "pynvml"}  # pynvml: NVML only, and torch warns on import
TORCH_PINNED_BY_SETUP = "torch"  # `make setup` pins the local CPU build; a looser spec pulls a multi-GB CUDA build


def requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def main() -> None:
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    no_deps = pyproject["tool"]["moslim"]["no-deps"]
    if sys.argv[1:] == ["--no-deps"]:
        print("\n".join(no_deps))
        return
    project = pyproject["project"]
    reqs = list(project["dependencies"])
    for extra in ("demo", "dev"):
        reqs += project["optional-dependencies"][extra]
    try:
        reqs += [r for r in importlib.metadata.requires("openrlhf") or [] if "extra ==" not in r]
    except importlib.metadata.PackageNotFoundError:
        sys.exit("install openrlhf==0.11.2 with --no-deps first")
    seen = {requirement_name(r) for r in no_deps} | {TORCH_PINNED_BY_SETUP}
    for req in reqs:
        name = requirement_name(req)
        if name in CUDA_ONLY or name in seen:
            continue
        seen.add(name)
        print(req.split(";")[0].strip())


if __name__ == "__main__":
    main()
