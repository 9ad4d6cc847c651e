"""Slim the image's virtualenv to what the app runs (a build step of the Dockerfile).

    python docker/slim_venv.py VENV

1. Deletes what never runs in the image: pip, setuptools and wheel (nothing is installed
   into a built image), the test suites that packages ship (folders named ``tests`` or
   ``test`` in site-packages, and torch's C++ test binaries), torch's C/C++ headers
   (``torch/include``, for building extensions) and tools (``torch/bin`` but its
   ``torch_shm_manager``: protoc and test programs), static libraries (``*.a``), type stubs
   (``*.pyi``), and the static symbol tables of big shared libraries (:func:`strip_symbols`).
2. Byte-code: deletes every ``__pycache__``, imports every module that an ``import``
   statement of the ``bids_semantoks`` package names (at any depth, so the lazy imports
   inside functions too) and compiles exactly the modules that are then loaded, as
   ``unchecked-hash`` pycs (valid whatever the files' times become in the image). Other
   modules still work; they are compiled in memory when first imported.
3. Prints the venv's size before and after, and the largest packages.

It refuses to finish (exit 1) when a module that imported before the slimming no longer
imports after it (the sweep runs twice), so a step that removes too much fails the build
rather than a run.
"""

from __future__ import annotations

import ast
import json
import os
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path

TEST_DIRS = {"tests", "test"}
REMOVE_DISTS = ("pip", "setuptools", "wheel")
# paths relative to site-packages
REMOVE_PATHS = ("torch/include", "torch/share/cmake")
# torch/bin: protoc and C++ test programs, but torch_shm_manager is checked by `import torch`
KEEP_IN_TORCH_BIN = {"torch_shm_manager"}


def _size(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def _site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if len(found) != 1:
        raise SystemExit(f"slim_venv: expected one site-packages under {venv}, found {found}")
    return found[0]


def _remove_dists(site: Path, names) -> list[str]:
    """Remove installed distributions by their RECORD (like ``pip uninstall``, without pip)."""
    removed = []
    for dist_info in sorted(site.glob("*.dist-info")):
        name = dist_info.name.split("-")[0].lower().replace("_", "-")
        if name not in names:
            continue
        record = dist_info / "RECORD"
        tops = set()
        for line in record.read_text().splitlines() if record.is_file() else []:
            rel = line.split(",")[0]
            if not rel:
                continue
            target = (site / rel).resolve()
            if target.is_file() or target.is_symlink():
                target.unlink()
            top = Path(rel).parts[0]
            if top not in ("..",):
                tops.add(top)
        for top in tops:
            p = site / top
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
        shutil.rmtree(dist_info, ignore_errors=True)
        removed.append(dist_info.name)
    # console scripts of the removed tools
    for script in ("pip", "pip3", "pip3.11", "wheel", "easy_install"):
        (site.parents[2] / "bin" / script).unlink(missing_ok=True)
    for pth in ("distutils-precedence.pth",):
        (site / pth).unlink(missing_ok=True)
    return removed


def _strip_files(site: Path) -> None:
    for rel in REMOVE_PATHS:
        shutil.rmtree(site / rel, ignore_errors=True)
    torch_bin = site / "torch" / "bin"
    for entry in sorted(torch_bin.iterdir()) if torch_bin.is_dir() else []:
        if entry.name not in KEEP_IN_TORCH_BIN:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for dirpath, dirnames, filenames in os.walk(site, topdown=True):
        for d in list(dirnames):
            if d in TEST_DIRS or d == "__pycache__":
                shutil.rmtree(os.path.join(dirpath, d), ignore_errors=True)
                dirnames.remove(d)
        for name in filenames:
            if name.endswith((".a", ".pyi")):
                os.unlink(os.path.join(dirpath, name))


_SHT_NULL, _SHT_SYMTAB, _SHT_NOBITS, _SHF_ALLOC = 0, 2, 8, 0x2


def strip_symbols(path: Path) -> int:
    """Drop the static symbol table (``.symtab`` and its ``.strtab``) of an ELF64 shared library.

    What ``strip --strip-unneeded`` removes from a library that ships them (torch's
    libtorch_cpu.so: ~90 MB): symbols for debuggers, never read by the dynamic loader, which
    uses the program headers and ``.dynsym``. Done in Python because the base image has no
    binutils. The file is left untouched (0 returned) unless the two sections are the last
    data before the section headers apart from non-loaded sections, and no section refers to
    them. Their headers stay (as ``SHT_NULL``) so that section numbers do not change. Returns
    the bytes saved.
    """
    import struct

    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:  # ELF64, little-endian
        return 0
    (e_phoff, e_shoff) = struct.unpack_from("<QQ", data, 0x20)
    (e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx) = struct.unpack_from("<HHHHH", data, 0x36)
    if e_shoff == 0 or e_shentsize != 64 or e_shnum == 0:
        return 0
    fmt = "<IIQQQQIIQQ"  # name type flags addr offset size link info addralign entsize
    sections = [list(struct.unpack_from(fmt, data, e_shoff + i * 64)) for i in range(e_shnum)]
    symtabs = [i for i, sh in enumerate(sections) if sh[1] == _SHT_SYMTAB and not sh[2] & _SHF_ALLOC]
    if len(symtabs) != 1:
        return 0
    sym = symtabs[0]
    strtab = sections[sym][6]
    if not 0 < strtab < e_shnum or sections[strtab][2] & _SHF_ALLOC or strtab == e_shstrndx:
        return 0
    drop = {sym, strtab}
    if any(sh[6] in drop for i, sh in enumerate(sections) if i not in drop):
        return 0
    cut = min(sections[i][4] for i in drop)
    segments_end = max((struct.unpack_from("<QQ", data, e_phoff + i * e_phentsize + 8)[0]
                        + struct.unpack_from("<Q", data, e_phoff + i * e_phentsize + 32)[0]
                        for i in range(e_phnum)), default=0)
    if segments_end > cut:
        return 0
    # sections stored after the cut (.shstrtab, .comment...): none may be loaded; moved down
    out = bytearray(data[:cut])
    for i, sh in sorted(enumerate(sections), key=lambda item: item[1][4]):
        if i in drop or i == 0 or sh[1] == _SHT_NOBITS or sh[4] < cut:
            continue
        if sh[2] & _SHF_ALLOC:
            return 0
        align = max(sh[8], 1)
        out += b"\0" * (-len(out) % align)
        chunk = data[sh[4]:sh[4] + sh[5]]
        sh[4] = len(out)
        out += chunk
    for i in drop:
        sections[i] = [sections[i][0], _SHT_NULL, 0, 0, 0, 0, 0, 0, 0, 0]
    out += b"\0" * (-len(out) % 8)
    struct.pack_into("<Q", out, 0x28, len(out))  # e_shoff
    for sh in sections:
        out += struct.pack(fmt, *sh)
    saved = len(data) - len(out)
    if saved <= 0:
        return 0
    tmp = path.with_name(path.name + ".strip-tmp")
    tmp.write_bytes(out)
    os.chmod(tmp, os.stat(path).st_mode)
    os.replace(tmp, path)
    return saved


def _strip_libraries(site: Path, min_bytes: int = 4_000_000) -> int:
    saved = 0
    for path in site.rglob("*.so*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size >= min_bytes:
            saved += strip_symbols(path)
    return saved


def _imported_names(package_dir: Path) -> set[str]:
    """Every module name an import statement in the package mentions (``from X import Y``
    gives ``X`` and ``X.Y``, since Y may be a submodule)."""
    names: set[str] = set()
    for path in package_dir.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


SWEEP = r"""
import importlib, json, pkgutil, sys
import bids_semantoks
names = json.loads(sys.argv[1])
ok = []
for name in sorted(names):
    try:
        importlib.import_module(name)
        ok.append(name)
    except Exception:  # 'from X import function', optional back-ends: not modules to compile
        pass
failed = []
for info in pkgutil.walk_packages(bids_semantoks.__path__, "bids_semantoks."):
    if info.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        failed.append(f"{info.name}: {type(exc).__name__}: {exc}")
files = sorted({m.__file__ for m in list(sys.modules.values())
                if isinstance(getattr(m, "__file__", None), str) and m.__file__.endswith(".py")})
print(json.dumps({"files": files, "ok": ok, "failed": failed}))
"""


def _sweep(venv: Path, names: list[str]) -> dict:
    """Import ``names`` and every module of the package in a fresh interpreter (no byte-code written)."""
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run([str(venv / "bin" / "python"), "-B", "-c", SWEEP, json.dumps(names)], env=env,
                          capture_output=True, text=True, cwd="/")
    if proc.returncode != 0:
        raise SystemExit(f"slim_venv: the import sweep failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["failed"]:
        raise SystemExit("slim_venv: modules of the package do not import:\n  " + "\n  ".join(result["failed"]))
    return result


def _compile(venv: Path, files: list[str]) -> int:
    prefix = str(venv.resolve()) + os.sep
    n = 0
    for f in files:
        if not os.path.realpath(f).startswith(prefix):
            continue  # the standard library (the base image's own)
        py_compile.compile(f, doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
                           optimize=-1)
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 64
    venv = Path(argv[0]).absolute()
    site = _site_packages(venv)
    before = _size(venv)
    package_dir = Path(subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import bids_semantoks, os; print(os.path.dirname(bids_semantoks.__file__))"],
        check=True, capture_output=True, text=True, cwd="/").stdout.strip())
    names = sorted(_imported_names(package_dir))
    importable = set(_sweep(venv, names)["ok"])
    removed = _remove_dists(site, REMOVE_DISTS)
    _strip_files(site)
    stripped = _strip_libraries(site)
    after_sweep = _sweep(venv, names)
    lost = sorted(importable - set(after_sweep["ok"]))
    if lost:
        raise SystemExit("slim_venv: these modules imported before the slimming and not after: " + ", ".join(lost))
    n = _compile(venv, after_sweep["files"])
    after = _size(venv)
    print(f"slim_venv: removed {', '.join(removed) or 'no distributions'}; symbol tables {stripped / 1e6:.0f} MB; "
          f"byte-code for {n} modules; "
          f"{venv}: {before / 1e6:.0f} MB -> {after / 1e6:.0f} MB")
    sizes = sorted(((_size(p), p.name) for p in site.iterdir() if p.is_dir()), reverse=True)[:8]
    print("slim_venv: largest: " + ", ".join(f"{name} {size / 1e6:.0f} MB" for size, name in sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
