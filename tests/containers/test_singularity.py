"""Apptainer definitions and the SLURM scripts (no Apptainer or SLURM on the CI machines).

The definitions are checked against the Dockerfile (same base image, torch version, install
and prefetch commands, runtime environment; %runscript passes the arguments, %test runs
--version). The SLURM scripts run for real against stub ``sbatch`` and ``apptainer``
commands that record their arguments: the submission must make one array task per
participant and a dependent group job, and each task's container command must bind the
data read-only, use --cleanenv (--nv for pretrain) and pass a command line our CLI parses.
"""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path

import pytest

from bids_semantoks.cli import cli

from containers_helpers import REPO_ROOT, global_arg_defaults, key_values, parse_dockerfile

SING = REPO_ROOT / "singularity"
FROM_DOCKER = SING / "bids_semantoks.def"
STANDALONE = SING / "bids_semantoks_standalone.def"


def _sections(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Header (``Bootstrap``, ``From``) and ``%section`` bodies of a definition file."""
    header, sections, current = {}, {}, None
    for line in path.read_text().splitlines():
        if line.startswith("%"):
            current = line[1:].split()[0]
            sections[current] = ""
        elif current is None:
            m = re.match(r"^(\w+):\s*(.+)$", line)
            if m:
                header[m.group(1)] = m.group(2).strip()
        else:
            sections[current] += line + "\n"
    return header, sections


@pytest.mark.parametrize("path", [FROM_DOCKER, STANDALONE], ids=lambda p: p.name)
def test_definition_runscript_and_test(path):
    header, sec = _sections(path)
    assert header["Bootstrap"] in ("docker", "docker-daemon", "docker-archive")
    assert re.search(r'^\s*exec /opt/venv/bin/bids_semantoks "\$@"\s*$', sec["runscript"], re.M)
    assert re.search(r"^\s*/opt/venv/bin/bids_semantoks --version\s*$", sec["test"], re.M)


def test_from_docker_definition_uses_the_image_of_this_version():
    import tomllib

    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    header, _ = _sections(FROM_DOCKER)
    assert header["From"] == f"semantoks:{version}"


def test_standalone_definition_matches_the_dockerfile():
    df = parse_dockerfile()
    header, sec = _sections(STANDALONE)
    assert header["From"] == global_arg_defaults(df)["BASE_IMAGE"], "base image differs from the Dockerfile"
    assert "@sha256:" in header["From"]
    builder_args = {k: v for i in df.stage("builder").all("ARG") for k, v in key_values(i.args)}
    arguments = dict(line.strip().split("=", 1) for line in sec["arguments"].splitlines() if "=" in line)
    assert arguments["TORCH_VERSION"] == builder_args["TORCH_VERSION"]
    assert arguments["TORCH_VARIANT"] == builder_args["TORCH_VARIANT"]
    data_args = {k: v for i in df.stage("data").all("ARG") for k, v in key_values(i.args)}
    assert arguments["WITH_MODEL"] == data_args["WITH_MODEL"]
    post = sec["post"]
    # the same install commands (build arguments spelled {{ X }} instead of ${X})
    replay = [i.args for st in ("builder", "data") for i in df.stage(st).all("RUN") if i.replay]
    normalised = re.sub(r"\{\{\s*(\w+)\s*\}\}", r"${\1}", post)
    for cmd in ('python -m venv "${VIRTUAL_ENV}"', 'pip install --no-cache-dir --no-compile "torch==${TORCH_VERSION}"',
                "pip install --no-cache-dir --no-compile .", 'python docker/slim_venv.py "${VIRTUAL_ENV}"',
                'python -m bids_semantoks.prefetch --data-dir "${BIDS_SEMANTOKS_DATA}"',
                "--skip-model"):
        assert any(cmd in r for r in replay), f"Dockerfile lost {cmd!r}"
        assert cmd in normalised, f"%post lacks {cmd!r}"
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in normalised
    # the runtime environment, except HOME (Apptainer sets the user's)
    runtime = {k: v for i in df.stage("runtime").all("ENV") for k, v in key_values(i.args)}
    env = dict(re.findall(r"^\s*export (\w+)=(\{\{[^}]*\}\}|\S+)\s*$", sec["environment"], re.M))
    env = {k: re.sub(r"\{\{\s*(\w+)\s*\}\}", r"${\1}", v.strip('"')) for k, v in env.items()}
    runtime.pop("HOME")
    # provenance of the container in dataset_description.json: the same image, another runtime
    assert runtime.pop("BIDS_SEMANTOKS_CONTAINER_TYPE") == "docker"
    assert env.pop("BIDS_SEMANTOKS_CONTAINER_TYPE") == "singularity"
    assert runtime.pop("BIDS_SEMANTOKS_CONTAINER_IMAGE") == "semantoks:${VERSION}"
    assert env.pop("BIDS_SEMANTOKS_CONTAINER_IMAGE") == "semantoks:" + {
        k: v for i in df.stage("runtime").all("ARG") for k, v in key_values(i.args)}["VERSION"]
    assert env.pop("PATH") == "/opt/venv/bin:${PATH}"
    runtime.pop("PATH")
    assert env == runtime


# ---------------------------------------------------------------------------------------------
# SLURM scripts with stub sbatch / apptainer

SBATCH_STUB = """#!/usr/bin/env bash
n=$(( $(ls "$STUB_LOG" 2>/dev/null | wc -l) + 1 ))
{ for a in "$@"; do printf '%s\\n' "$a"; done; } > "$STUB_LOG/sbatch_$n.args"
env > "$STUB_LOG/sbatch_$n.env"
echo "$((1000 + n))"
"""
APPTAINER_STUB = """#!/usr/bin/env bash
{ for a in "$@"; do printf '%s\\n' "$a"; done; } > "$STUB_LOG/apptainer.args"
"""


@pytest.fixture
def stubs(tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    log.mkdir()
    for name, text in (("sbatch", SBATCH_STUB), ("apptainer", APPTAINER_STUB)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_LOG": str(log), "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    return env, log


def _dataset(tmp_path: Path) -> tuple[Path, Path, Path]:
    bids = tmp_path / "fmriprep"
    for sub in ("01", "02", "03"):
        (bids / f"sub-{sub}" / "func").mkdir(parents=True)
    (bids / "participants.tsv").write_text("participant_id\tage\nsub-01\t30\nsub-02\t40\nsub-03\t50\n")
    sif = tmp_path / "semantoks.sif"
    sif.write_bytes(b"")
    return bids, tmp_path / "out", sif


def _calls(log: Path, prefix: str) -> list[list[str]]:
    files = sorted(log.glob(f"{prefix}_*.args"), key=lambda p: int(p.stem.split("_")[1]))
    return [p.read_text().splitlines() for p in files]


def test_submit_makes_an_array_and_a_dependent_group_job(stubs, tmp_path):
    env, log = stubs
    bids, out, sif = _dataset(tmp_path)
    proc = subprocess.run(
        ["bash", str(SING / "slurm_submit.sh"), "--max-parallel", "2", "--pretrain", "--group-arg", "--target",
         "--group-arg", "age", str(sif), str(bids), str(out), "--", "--denoise-strategy", "scrubbing"],
        env={**env, "LOG_DIR": str(tmp_path / "logs")}, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    part, group, pre = _calls(log, "sbatch")
    assert "--array=1-3%2" in part
    assert part[part.index(str(SING / "slurm_job.sh")) + 1:] == ["participant", "--denoise-strategy", "scrubbing"]
    assert "--dependency=afterok:1001" in group
    assert group[group.index(str(SING / "slurm_job.sh")) + 1:] == [
        "group", "--denoise-strategy", "scrubbing", "--target", "age"]
    assert "--dependency=afterok:1001" in pre and "--gres=gpu:1" in pre
    exported = dict(line.split("=", 1) for line in (log / "sbatch_1.env").read_text().splitlines() if "=" in line)
    assert Path(exported["LABELS_FILE"]).read_text().split() == ["01", "02", "03"]
    assert exported["SIF"] == str(sif) and exported["OUT_DIR"] == str(out)


def _run_job(env, level, task=None, extra=(), **more):
    job_env = {**env, **{k: str(v) for k, v in more.items()}, "SLURM_JOB_ID": "77", "SLURM_CPUS_PER_TASK": "3"}
    if task is not None:
        job_env["SLURM_ARRAY_TASK_ID"] = str(task)
    return subprocess.run(["bash", str(SING / "slurm_job.sh"), level, *extra], env=job_env,
                          capture_output=True, text=True, timeout=60)


def _container_command(log: Path) -> tuple[list[str], dict[str, str], list[str]]:
    argv = (log / "apptainer.args").read_text().splitlines()
    assert argv[0] == "run"
    sif_at = next(i for i, a in enumerate(argv) if a.endswith(".sif"))
    opts, app = argv[1:sif_at], argv[sif_at + 1:]
    binds = {}
    for i, a in enumerate(opts):
        if a in ("--bind", "-B"):
            host, container, *mode = opts[i + 1].split(":")
            binds[container] = ":".join([host, *mode])
    return opts, binds, app


@pytest.mark.parametrize("labels_source", ["participants.tsv", "file"])
def test_participant_task_runs_its_label_in_the_container(stubs, tmp_path, labels_source):
    env, log = stubs
    bids, out, sif = _dataset(tmp_path)
    labels = tmp_path / "labels.txt"
    if labels_source == "file":
        labels.write_text("# subjects\nsub-03\n\n02\n")
        expected = "02"
    else:  # what slurm_submit.sh writes from participants.tsv
        subprocess.run(["bash", str(SING / "slurm_submit.sh"), str(sif), str(bids), str(out)],
                       env={**env, "LOG_DIR": str(tmp_path / "logs")}, check=True, capture_output=True, timeout=60)
        labels = next((tmp_path / "logs").glob("participants_*.txt"))
        expected = "02"
    scratch = tmp_path / "node_local"
    scratch.mkdir()
    cache = tmp_path / "cache"
    cache.mkdir()
    proc = _run_job(env, "participant", task=2, extra=["--model", "none"], SIF=sif, BIDS_DIR=bids, OUT_DIR=out,
                    LABELS_FILE=labels, WORK_ROOT=scratch, DATA_DIR=cache)
    assert proc.returncode == 0, proc.stderr
    opts, binds, app = _container_command(log)
    assert "--cleanenv" in opts and "--nv" not in opts
    assert binds["/bids"] == f"{bids}:ro"
    assert binds["/opt/bids_semantoks/data"] == f"{cache}:ro"
    assert binds["/out"] == str(out)
    assert Path(binds["/work"]).parent == scratch, "the work dir must be node-local"
    assert not Path(binds["/work"]).exists(), "the work dir is removed at the end"
    ctx = cli.make_context("bids_semantoks", app)
    assert ctx.params["analysis_level"] == "participant"
    assert ctx.params["participant_label"] == (expected,)
    assert str(ctx.params["bids_dir"]) == "/bids" and str(ctx.params["work_dir"]) == "/work"
    assert ctx.params["nprocs"] == 3 and ctx.params["omp_nthreads"] == 1 and ctx.params["model"] == "none"


def test_task_without_a_label_fails_cleanly(stubs, tmp_path):
    env, log = stubs
    bids, out, sif = _dataset(tmp_path)
    labels = tmp_path / "labels.txt"
    labels.write_text("01\n")
    proc = _run_job(env, "participant", task=5, SIF=sif, BIDS_DIR=bids, OUT_DIR=out, LABELS_FILE=labels,
                    WORK_ROOT=tmp_path)
    assert proc.returncode == 64 and "no label number 5" in proc.stderr
    assert not (log / "apptainer.args").exists()


def test_group_and_pretrain_jobs(stubs, tmp_path):
    env, log = stubs
    bids, out, sif = _dataset(tmp_path)
    proc = _run_job(env, "group", extra=["--target", "age"], SIF=sif, BIDS_DIR=bids, OUT_DIR=out, WORK_ROOT=tmp_path)
    assert proc.returncode == 0, proc.stderr
    opts, binds, app = _container_command(log)
    assert "--cleanenv" in opts and "--nv" not in opts and "/opt/bids_semantoks/data" not in binds
    ctx = cli.make_context("bids_semantoks", app)
    assert ctx.params["analysis_level"] == "group" and ctx.params["target"] == ("age",)
    proc = _run_job(env, "pretrain", extra=["--model-size", "tiny"], SIF=sif, BIDS_DIR=bids, OUT_DIR=out,
                    WORK_ROOT=tmp_path)
    assert proc.returncode == 0, proc.stderr
    opts, binds, app = _container_command(log)
    assert "--nv" in opts and "--cleanenv" in opts
    ctx = cli.make_context("bids_semantoks", app)
    assert ctx.params["analysis_level"] == "pretrain" and ctx.params["device"] == "cuda"
    assert ctx.params["omp_nthreads"] == 3 and ctx.params["model_size"] == "tiny"


def test_scripts_are_executable():
    for script in SING.glob("*.sh"):
        assert script.stat().st_mode & stat.S_IXUSR, script
        assert script.read_text().startswith("#!/usr/bin/env bash\n"), script
    # sbatch reads #SBATCH lines only before the first command
    lines = (SING / "slurm_job.sh").read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines[1:], 1) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(lines) if line.startswith("#SBATCH"))


def _big_dataset(tmp_path: Path, n: int) -> tuple[Path, Path, Path]:
    bids = tmp_path / "cohort"
    bids.mkdir()
    rows = "".join(f"sub-{i:05d}\t{20 + i % 50}\n" for i in range(1, n + 1))
    (bids / "participants.tsv").write_text("participant_id\tage\n" + rows)
    sif = tmp_path / "semantoks.sif"
    sif.write_bytes(b"")
    return bids, tmp_path / "out", sif


def test_subjects_per_task_makes_a_few_hundred_tasks_for_a_cohort(stubs, tmp_path):
    """40,000 participants in chunks of 100: a 400-task array, and every label in exactly one task."""
    env, log = stubs
    n, per = 40_000, 100
    bids, out, sif = _big_dataset(tmp_path, n)
    proc = subprocess.run(
        ["bash", str(SING / "slurm_submit.sh"), "--subjects-per-task", str(per), "--max-parallel", "50",
         str(sif), str(bids), str(out), "--", "--model", "none"],
        env={**env, "LOG_DIR": str(tmp_path / "logs")}, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    part, group = _calls(log, "sbatch")
    assert "--array=1-400%50" in part
    assert "400 tasks" in proc.stdout
    exported = dict(line.split("=", 1) for line in (log / "sbatch_1.env").read_text().splitlines() if "=" in line)
    assert exported["SUBJECTS_PER_TASK"] == str(per)
    labels = Path(exported["LABELS_FILE"])
    job_env = {k: exported[k] for k in ("SIF", "BIDS_DIR", "OUT_DIR", "LABELS_FILE", "SUBJECTS_PER_TASK")}
    seen = []
    for task in (1, 2, 400):  # first, second and last chunk, each parsed by our CLI
        proc = _run_job(env, "participant", task=task, WORK_ROOT=tmp_path, **job_env)
        assert proc.returncode == 0, proc.stderr
        _, _, app = _container_command(log)
        ctx = cli.make_context("bids_semantoks", app)
        chunk = list(ctx.params["participant_label"])
        assert len(chunk) == per
        seen.append(chunk)
    assert seen[0][0] == "00001" and seen[0][-1] == "00100" and seen[1][0] == "00101"
    assert seen[2][-1] == "40000" and seen[2][0] == "39901"
    assert labels.read_text().split()[:3] == ["00001", "00002", "00003"]


def test_subjects_per_task_last_chunk_is_partial_and_past_the_end_fails(stubs, tmp_path):
    env, log = stubs
    bids, out, sif = _big_dataset(tmp_path, 7)
    proc = subprocess.run(["bash", str(SING / "slurm_submit.sh"), "--subjects-per-task", "3", "--no-group",
                           str(sif), str(bids), str(out)],
                          env={**env, "LOG_DIR": str(tmp_path / "logs")}, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (part,) = _calls(log, "sbatch")
    assert "--array=1-3" in part
    labels = next((tmp_path / "logs").glob("participants_*.txt"))
    common = dict(SIF=sif, BIDS_DIR=bids, OUT_DIR=out, LABELS_FILE=labels, SUBJECTS_PER_TASK=3, WORK_ROOT=tmp_path)
    proc = _run_job(env, "participant", task=3, **common)
    assert proc.returncode == 0, proc.stderr
    ctx = cli.make_context("bids_semantoks", _container_command(log)[2])
    assert ctx.params["participant_label"] == ("00007",)
    (log / "apptainer.args").unlink()
    proc = _run_job(env, "participant", task=4, **common)
    assert proc.returncode == 64 and "no labels 10-12" in proc.stderr
    assert not (log / "apptainer.args").exists()


@pytest.mark.parametrize("value", ["0", "-2", "ten", "07"])
def test_subjects_per_task_must_be_a_positive_integer(stubs, tmp_path, value):
    env, log = stubs
    bids, out, sif = _dataset(tmp_path)
    proc = subprocess.run(["bash", str(SING / "slurm_submit.sh"), "--subjects-per-task", value, str(sif), str(bids),
                           str(out)], env={**env, "LOG_DIR": str(tmp_path / "logs")}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 64, proc.stderr
    assert not _calls(log, "sbatch")
