"""docker/slim_venv.py, the Dockerfile's slimming step, on real files (fast; the image test runs it whole).

- :func:`strip_symbols` on a real compiled extension of scipy: smaller, the symbol table gone,
  the dynamic symbols kept, and Python still imports it and gets the same results;
- the distributions removal (pip-like, from RECORD) and the static import list.
"""

from __future__ import annotations

import importlib.util
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from containers_helpers import REPO_ROOT

spec = importlib.util.spec_from_file_location("slim_venv", REPO_ROOT / "docker" / "slim_venv.py")
slim = importlib.util.module_from_spec(spec)
spec.loader.exec_module(slim)


def _section_types(path: Path) -> list[int]:
    data = path.read_bytes()
    (e_shoff,) = struct.unpack_from("<Q", data, 0x28)
    (e_shnum,) = struct.unpack_from("<H", data, 0x3C)
    return [struct.unpack_from("<I", data, e_shoff + i * 64 + 4)[0] for i in range(e_shnum)]


def test_strip_symbols_keeps_an_extension_importable(tmp_path):
    scipy_signal = pytest.importorskip("scipy.signal")
    src = next(Path(scipy_signal.__file__).parent.glob("_sosfilt.cpython-*.so"), None)
    if src is None or 2 not in _section_types(src):
        pytest.skip("no scipy extension with a symbol table here")
    lib = tmp_path / src.name
    shutil.copy2(src, lib)
    before = lib.stat().st_size
    saved = slim.strip_symbols(lib)
    assert saved > 0 and lib.stat().st_size == before - saved
    assert 2 not in _section_types(lib), "the SHT_SYMTAB section is still there"
    assert slim.strip_symbols(lib) == 0, "a second pass finds nothing to strip"
    nm = shutil.which("nm")
    if nm:  # dynamic symbols (what the loader uses) are unchanged
        dyn = [subprocess.run([nm, "-D", "--defined-only", str(p)], capture_output=True, text=True).stdout
               for p in (src, lib)]
        assert dyn[0] == dyn[1] and "PyInit__sosfilt" in dyn[1]
    code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import _sosfilt; "
            "from scipy.signal import sosfilt, butter; "
            "assert _sosfilt.__file__.startswith(sys.argv[1]); "
            "x = np.random.default_rng(0).standard_normal(64); sos = butter(2, 0.2, output='sos'); "
            "y = sosfilt(sos, x); z = x[None, :].copy(); zi = np.zeros((sos.shape[0], 1, 2)); "
            "_sosfilt._sosfilt(sos, z, zi); assert np.allclose(y, z[0]); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_strip_symbols_leaves_other_files_alone(tmp_path):
    text = tmp_path / "notelf.so"
    text.write_bytes(b"not an ELF file" * 10)
    assert slim.strip_symbols(text) == 0 and text.read_bytes() == b"not an ELF file" * 10


def test_remove_dists_by_record(tmp_path):
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    (site / "pip" / "_internal").mkdir(parents=True)
    (site / "pip" / "__init__.py").write_text("")
    (site / "pip" / "_internal" / "x.py").write_text("")
    (tmp_path / "venv" / "bin").mkdir()
    (tmp_path / "venv" / "bin" / "pip").write_text("#!")
    info = site / "pip-23.0.1.dist-info"
    info.mkdir()
    (info / "RECORD").write_text("pip/__init__.py,,\npip/_internal/x.py,,\n../../../bin/pip,,\n")
    (site / "keep").mkdir()
    (site / "keep" / "__init__.py").write_text("")
    removed = slim._remove_dists(site, ("pip",))
    assert removed == ["pip-23.0.1.dist-info"]
    assert not (site / "pip").exists() and not info.exists() and not (tmp_path / "venv" / "bin" / "pip").exists()
    assert (site / "keep" / "__init__.py").is_file()


def test_imported_names_include_lazy_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("import os\nfrom json import decoder\n\ndef f():\n    import csv\n    from . import b\n")
    names = slim._imported_names(pkg)
    assert {"os", "json", "json.decoder", "csv"} <= names
    assert not any(n.startswith(".") for n in names)
