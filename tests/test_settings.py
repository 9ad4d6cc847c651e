"""The nested settings model (bids_semantoks.config): sections, files, defaults, import weight."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bids_semantoks.config import (
    GroupOptions, PretrainOptions, RunSettings, Settings, available_cpus, build_settings, read_config_file,
)
from bids_semantoks.errors import UsageError
from tests.conftest import REPO_ROOT


def test_one_definition_per_setting():
    from bids_semantoks.pretrain.options import PretrainOptions as P
    from bids_semantoks.probe.options import GroupOptions as G

    assert G is GroupOptions and P is PretrainOptions
    assert Settings.model_fields["group"].annotation is GroupOptions
    assert Settings.model_fields["pretrain"].annotation is PretrainOptions
    from bids_semantoks.config import SECTIONS

    for model in SECTIONS.values():  # every setting says what it means
        undocumented = [name for name, f in model.model_fields.items() if not f.description]
        assert not undocumented, f"{model.__name__}: {undocumented}"


def test_top_level_keys_go_to_the_section_that_has_them(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('nprocs = 2\nmodel = "none"\ntargets = ["dx"]\nepochs = 3\n[group]\ncv_folds = 3\n')
    assert read_config_file(cfg) == {"run": {"nprocs": 2}, "participant": {"model": "none"},
                                     "group": {"cv_folds": 3, "targets": ["dx"]}, "pretrain": {"epochs": 3}}
    s = build_settings(tmp_path, tmp_path / "o", "group", {}, config_file=cfg)
    assert (s.group.targets, s.group.cv_folds, s.group.n_jobs, s.pretrain.epochs) == (["dx"], 3, 2, 3)


def test_cli_values_win_and_errors_name_the_option(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("group:\n  cv_folds: 3\n")
    s = build_settings(tmp_path, tmp_path / "o", "group", {"group": {"cv_folds": 4}}, config_file=cfg)
    assert s.group.cv_folds == 4
    with pytest.raises(UsageError, match=r"'group.cv_folds' \(--cv-folds\)"):
        build_settings(tmp_path, tmp_path / "o", "group", {"group": {"cv_folds": 1}}, config_file=cfg)


def test_omp_nthreads_default(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert RunSettings().omp_nthreads == 3
    assert RunSettings(omp_nthreads=5).omp_nthreads == 5
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert RunSettings(nprocs=2).omp_nthreads == max(1, available_cpus() // 2)


def test_building_settings_loads_no_numerical_library():
    """The CLI limits the BLAS/OpenMP threads after building the settings: numpy must not be loaded yet."""
    code = ("import sys; import bids_semantoks.cli, bids_semantoks.config; "
            "from bids_semantoks.config import build_settings; "
            "build_settings('.', 'out', 'group', {'group': {'targets': ['dx']}}); "
            "print(sorted(m for m in ('numpy', 'torch', 'scipy', 'bids', 'nipype') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
