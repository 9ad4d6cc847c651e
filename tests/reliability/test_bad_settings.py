"""Settings a user gets wrong (issue 13 item 8, issue 12 item 5): one line naming the setting or
file and the fix, 64 (usage) or 65 (bad data), never exit 1; and the settings that must act as
documented (``--omp-nthreads`` in the main process, ``--lr`` as the spec's base LR).

Every setting is validated when the settings are built, before anything is read or written:
most cases below need no dataset at all (BIDS_DIR does not exist, and the error is still the
setting's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from reliability_helpers import PARITY_CKPT, output_files, subject_outputs

from tests.conftest import DSEG_TSV, REPO_ROOT

M = ("--model", "none")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def _nowhere(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "no_bids", tmp_path / "out"


# -- config files ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,text", [
    ("p.toml", "participant = 3\n"),
    ("p.yaml", "participant: [1, 2]\n"),
    ("p.json", '{"participant": "scrubbing"}'),
])
def test_config_section_that_is_not_a_table(cli, tmp_path, name, text):
    cfg = tmp_path / name
    cfg.write_text(text)
    bids, out = _nowhere(tmp_path)
    r = cli(bids, out, "participant", "--config-file", cfg)
    assert r.code == 64, r.err
    assert str(cfg) in r.message and "'participant' must be a section" in r.message, r.message
    assert not out.exists()


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_config_file_not_utf8(cli, tmp_path, encoding):
    cfg = tmp_path / "settings.toml"
    cfg.write_bytes('[participant]\nmodel = "none"\n'.encode(encoding))
    bids, out = _nowhere(tmp_path)
    r = cli(bids, out, "participant", "--config-file", cfg)
    assert r.code == 65, r.err
    assert str(cfg) in r.message and "save it as UTF-8" in r.message, r.message
    assert not out.exists()


def test_config_file_with_latin1_bytes(cli, tmp_path):
    cfg = tmp_path / "settings.yaml"
    cfg.write_bytes("participant:\n  atlas: 'r\xe9gions.tsv'\n".encode("latin-1"))
    r = cli(*_nowhere(tmp_path), "participant", "--config-file", cfg)
    assert r.code == 65, r.err
    assert str(cfg) in r.message and "not UTF-8" in r.message and "0xe9" in r.message, r.message


@pytest.mark.parametrize("level,text,setting,hint", [
    # a typo in another level's section is refused too: the settings are validated as a whole
    ("participant", "[pretrain]\nepoch = 3\n", "pretrain.epoch", "did you mean 'epochs'?"),
    ("group", "[group]\ntarget = ['dx']\n", "group.target", "did you mean 'targets'?"),
    ("group", "[group]\ntargets = ['dx']\ncv_folds = 1\n", "group.cv_folds", "greater than or equal to 2"),
    ("pretrain", "[pretrain]\nbatch_size = 0\n", "pretrain.batch_size", "greater than 0"),
])
def test_group_and_pretrain_sections_checked_when_the_settings_are_built(cli, tmp_path, level, text, setting, hint):
    cfg = tmp_path / "settings.toml"
    cfg.write_text(text)
    bids, out = _nowhere(tmp_path)  # the setting is reported, not the missing dataset
    r = cli(bids, out, level, "--config-file", cfg)
    assert r.code == 64, r.err
    assert r.message.startswith(f"bids_semantoks: error: {cfg}: ") and f"'{setting}'" in r.message, r.message
    assert hint in r.message, r.message


def test_group_option_on_the_command_line_names_the_option(cli, tmp_path):
    r = cli(*_nowhere(tmp_path), "group", "--target", "dx", "--cv-folds", "1")
    assert r.code == 64, r.err
    assert "'group.cv_folds' (--cv-folds 1)" in r.message, r.message


# -- participant options ---------------------------------------------------------------------------
@pytest.mark.parametrize("value,why", [("inf", "finite"), ("1e-300", "greater than or equal to 0.1"),
                                       ("1e6", "less than or equal to 10")])
def test_target_tr_out_of_range(cli, tmp_path, value, why):
    r = cli(*_nowhere(tmp_path), "participant", "--target-tr", value)
    assert r.code == 64, r.err
    assert "'participant.target_tr' (--target-tr " in r.message and why in r.message, r.message


def test_unknown_entity_in_filter_file(cli, tiny_bids, tmp_path):
    filters = tmp_path / "filter.json"
    filters.write_text('{"bold": {"acq": "mb4"}}')
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", "--bids-filter-file", filters, *M)
    assert r.code == 64, r.err
    assert str(filters) in r.message and "unknown entity 'acq'" in r.message, r.message
    assert "valid entities:" in r.message and "acquisition" in r.message, r.message
    assert not output_files(out)


def test_filter_file_with_a_bom_still_filters(cli, tiny_bids, tmp_path):
    """A UTF-8 byte-order mark (Notepad) is not a JSON error; ``null`` still means 'entity absent'."""
    filters = tmp_path / "filter.json"
    filters.write_bytes(b"\xef\xbb\xbf" + json.dumps({"bold": {"subject": "02", "acquisition": None}}).encode())
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", "--bids-filter-file", filters, *M)
    assert r.code == 0, r.err
    assert subject_outputs(out, "02") and not subject_outputs(out, "01")


def test_label_file_with_a_bom(cli, tiny_bids, tmp_path):
    """Excel and Notepad write a byte-order mark: it is not part of the first label."""
    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"\xef\xbb\xbf01\r\n")
    cfg = tmp_path / "settings.toml"  # a config file with a BOM too
    cfg.write_bytes(b'\xef\xbb\xbf[participant]\ndenoise_strategy = "none"\n')
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", "--participant-label", labels, "--config-file", cfg, *M)
    assert r.code == 0, r.err
    assert subject_outputs(out, "01") and not subject_outputs(out, "02")
    assert any("desc-none" in name for name in subject_outputs(out, "01"))


def test_label_file_in_utf16(cli, tiny_bids, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("01\n", encoding="utf-16")
    r = cli(tiny_bids, tmp_path / "out", "participant", "--participant-label", labels, *M)
    assert r.code == 65, r.err
    assert str(labels) in r.message and "UTF-16" in r.message and "UTF-8" in r.message, r.message


def test_label_that_is_not_a_bids_label(cli, tiny_bids, tmp_path):
    r = cli(tiny_bids, tmp_path / "out", "participant", "--participant-label", "sub-01_ses-1", *M)
    assert r.code == 64, r.err
    assert "'01_ses-1' is not a BIDS label" in r.message and "--participant-label" in r.message, r.message


# -- model configs ------------------------------------------------------------------------------------
def _model_folder(tmp_path: Path, patch_len: int, n_patches: int) -> Path:
    from bids_semantoks.atlas import AtlasTable
    from bids_semantoks.model import Encoder, model_preset
    from bids_semantoks.model.store import save_encoder

    table = AtlasTable.from_tsv(DSEG_TSV)
    folder = tmp_path / "mymodel"
    save_encoder(Encoder(model_preset("tiny", list(table.networks), table.network_index.tolist())), folder)
    doc = json.loads((folder / "config.json").read_text())
    doc["config"].update(patch_len=patch_len, n_patches=n_patches)  # what a hand-edited config says
    (folder / "config.json").write_text(json.dumps(doc))
    return folder


def test_model_folder_whose_window_is_not_100(cli, tiny_bids, tmp_path):
    folder = _model_folder(tmp_path, patch_len=10, n_patches=5)
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", "--model", folder, "--device", "cpu", "--participant-label", "01")
    assert r.code == 65, r.err
    assert str(folder / "config.json") in r.message and "patch_len x n_patches = 10 x 5 = 50" in r.message, r.message
    assert not [p for p in output_files(out) if "sub-" in str(p.relative_to(out))]


def test_authors_checkpoint_whose_window_is_not_100(cli, tiny_bids, tmp_path):
    obj = torch.load(PARITY_CKPT, weights_only=True, map_location="cpu")
    obj["config"]["data"]["patch_size"] = 10
    path = tmp_path / "patch10.pth"
    torch.save(obj, path)
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", "--model", path, "--device", "cpu", "--participant-label", "01")
    assert r.code == 65, r.err
    assert str(path) in r.message and "model window is 100" in r.message, r.message


# -- settings that must act as documented --------------------------------------------------------------
@pytest.fixture
def captured(monkeypatch):
    """The Settings the real command line builds (the level itself is not run)."""
    from bids_semantoks import levels

    seen = []
    monkeypatch.setattr(levels, "run", seen.append)
    for var in THREAD_VARS:  # the CLI sets them in this process: restore them afterwards
        monkeypatch.setenv(var, "1")
    return seen


def test_lr_is_the_base_lr_per_256_samples(cli, tmp_path, captured):
    """MODEL_SPEC: base LR 7e-4 x batch/256. ``--lr`` is that base; a file's absolute ``lr`` yields to it."""
    cfg = tmp_path / "settings.toml"
    cfg.write_text("[pretrain]\nlr = 0.5\n")
    r = cli(*_nowhere(tmp_path), "pretrain", "--lr", "1e-3", "--batch-size", "128", "--config-file", cfg)
    assert r.code == 0, r.err
    opts = captured[-1].pretrain
    assert opts.base_lr == 1e-3 and opts.lr is None and opts.peak_lr == pytest.approx(1e-3 * 128 / 256)
    r = cli(*_nowhere(tmp_path), "pretrain", "--batch-size", "512")
    assert r.code == 0, r.err
    assert captured[-1].pretrain.peak_lr == pytest.approx(1.4e-3)  # the paper's recipe


def test_settings_sections_are_typed(cli, tmp_path, captured):
    from bids_semantoks.config import GroupOptions, PretrainOptions

    cfg = tmp_path / "settings.yaml"
    cfg.write_text("group:\n  cv_repeats: 2\npretrain:\n  epochs: 3\n")
    r = cli(*_nowhere(tmp_path), "group", "--target", "dx", "--nprocs", "2", "--config-file", cfg)
    assert r.code == 0, r.err
    s = captured[-1]
    assert isinstance(s.group, GroupOptions) and isinstance(s.pretrain, PretrainOptions)
    assert (s.group.targets, s.group.cv_repeats, s.group.n_jobs, s.pretrain.epochs) == (["dx"], 2, 2, 3)
    assert s.run.omp_nthreads == 1  # $OMP_NUM_THREADS when --omp-nthreads is not given


PROBE = textwrap.dedent("""
    # Runs the real entry point, then reports the thread pools of the libraries it loaded.
    import atexit, json, os, runpy, sys

    def report():
        info = {"numpy": "numpy" in sys.modules}
        if info["numpy"]:
            from threadpoolctl import threadpool_info
            info["pools"] = [[p["user_api"], p["internal_api"], p["num_threads"]] for p in threadpool_info()]
        if "torch" in sys.modules:
            info["torch"] = sys.modules["torch"].get_num_threads()
        with open(os.environ["THREADS_REPORT"], "w") as fh:
            json.dump(info, fh)

    atexit.register(report)
    sys.argv = ["bids_semantoks", *sys.argv[1:]]
    runpy.run_module("bids_semantoks", run_name="__main__", alter_sys=True)
""")


def _default_blas_threads(env) -> int:
    code = "import numpy, threadpoolctl; print(max(p['num_threads'] for p in threadpoolctl.threadpool_info()))"
    return int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              check=True).stdout)


def test_omp_nthreads_limits_blas_in_the_main_process(tiny_bids, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    if _default_blas_threads(env) < 2:
        pytest.skip("one CPU: a limit of 1 thread cannot be told from the default")
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    report = tmp_path / "threads.json"
    out = tmp_path / "out"
    # the app loads the model (torch) and indexes the dataset (pybids, numpy), then stops on the label:
    # the pools are sized when the libraries load, so this is what a whole run would use (and cheaper)
    proc = subprocess.run(
        [sys.executable, str(probe), str(tiny_bids), str(out), "participant", "--participant-label", "99",
         "--omp-nthreads", "1", "--model", PARITY_CKPT, "--device", "cpu"],
        cwd=REPO_ROOT, env={**env, "THREADS_REPORT": str(report)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 66 and "sub-99 not found" in proc.stderr, proc.stderr[-3000:]
    info = json.loads(report.read_text())
    assert info["numpy"] and info["pools"], info
    assert all(n == 1 for _, _, n in info["pools"]), info  # every BLAS/OpenMP pool of the main process
    assert info.get("torch", 1) == 1, info
