"""Fill the data cache so the app runs offline: ``python -m bids_semantoks.prefetch``.

Used when building the container images (and by HPC admins filling a shared cache on a
login node that has internet)::

    python -m bids_semantoks.prefetch [--data-dir DIR] [--spaces SPACE ...] [--skip-model] [--verify]

1. the default 457-region atlas for every requested template space (both supported
   spaces by default): upstream files downloaded and checked against their pinned sha256
   (``BIDS_SEMANTOKS_ATLAS_MIRROR`` replaces the upstream URLs), derived files built and
   verified (:func:`bids_semantoks.atlas.registry.get_default_atlas`);
2. the official Brain-Semantoks weights (:func:`bids_semantoks.model.fetch_official`),
   unless ``--skip-model``; the line printed says how the file arrived (``hub-download``
   with its revision, or ``user-placed``) and its model label. With ``--verify`` the cached
   file's sha256 is compared with the sha256 the hub publishes for it when the hub is
   reachable (a mismatch exits 65; an unreachable hub is reported, not an error), and a match
   is recorded, so a hand-placed copy of the release is then labelled ``official``;
3. everything under the filled folders made world-readable (files ``a+r``, folders
   ``a+rx``), so a container run with any ``--user`` (or another account sharing the
   cache) can read it. A filled cache is only read at run time, so it may be mounted
   read-only.

With ``--data-dir DIR`` the atlases go to ``DIR/atlases`` and the weights to
``DIR/models`` (``$BIDS_SEMANTOKS_ATLAS_DIR`` is ignored then). Without it, the folders
are the ones the app itself would use (``$BIDS_SEMANTOKS_ATLAS_DIR``,
``$BIDS_SEMANTOKS_DATA``, ``~/.cache/bids_semantoks``).

Exit codes are the app's (:mod:`bids_semantoks.errors`): 0 when everything is present
and verified, 66 when a file cannot be downloaded, 65 when a file does not verify.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from bids_semantoks.errors import EX_USAGE, BidsAppError


def make_world_readable(root: Path) -> None:
    """Add read permission for everyone (and traverse for folders) under ``root``.

    Symbolic links are left alone (their targets are visited when they are inside
    ``root``). Files that cannot be changed (owned by someone else) are skipped.
    """
    root = Path(root)
    paths = [root]
    if root.is_dir() and not root.is_symlink():
        for dirpath, dirnames, filenames in os.walk(root):
            paths += [Path(dirpath) / name for name in dirnames + filenames]
    for path in paths:
        try:
            st = path.lstat()  # FileNotFoundError is an OSError
            if stat.S_ISLNK(st.st_mode):
                continue
            extra = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
            if stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IXUSR:
                extra |= stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
            if (st.st_mode | extra) != st.st_mode:
                os.chmod(path, stat.S_IMODE(st.st_mode) | extra)
        except OSError:
            continue


def prefetch(
    data_dir: str | Path | None = None,
    spaces: list[str] | tuple[str, ...] | None = None,
    *,
    model: bool = True,
    verify: bool = False,
    log=print,
) -> dict[str, Path]:
    """Download and verify the atlases (and the official weights); return what was filled.

    Parameters
    ----------
    data_dir : str or Path, optional
        Data cache folder; atlases in ``<data_dir>/atlases``, weights in ``<data_dir>/models``.
        Default: the app's own resolution (environment variables, then ``~/.cache``).
    spaces : sequence of str, optional
        Template spaces of the default atlas; default all supported spaces.
    model : bool, default True
        Also fetch the official model weights.
    verify : bool, default False
        Compare the cached weights with the hub's published sha256 (when reachable), and
        the derived atlases' Schaefer labels with TemplateFlow's Schaefer 2018 files when
        they are in ``$TEMPLATEFLOW_HOME`` (:func:`bids_semantoks.atlas.templates.schaefer_crosscheck`).
    log : callable
        Progress messages (one line each).

    Returns
    -------
    dict
        ``{"atlases": <atlas folder>, "models": <model folder or absent>, "<space>": <dseg path>}``.

    Raises
    ------
    bids_semantoks.errors.BidsAppError
        A file cannot be downloaded (MissingInputError), does not verify (DataError),
        or a space is not supported (UsageError).
    """
    from bids_semantoks.atlas import registry

    spaces = list(spaces or registry.SUPPORTED_SPACES)
    for space in spaces:
        registry.check_space(space)
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser().absolute()
        atlas_dir = data_dir / "atlases"
    else:
        atlas_dir = registry.resolve_atlas_dir()
    out: dict[str, Path] = {"atlases": atlas_dir}
    for space in spaces:
        resolved = registry.get_default_atlas(space, atlas_dir=atlas_dir, download=True)
        log(f"atlas {resolved.label} ({space}): {resolved.dseg_img_path} [{resolved.table.n_regions} regions, verified]")
        out[space] = Path(resolved.dseg_img_path)
    if verify:
        from bids_semantoks.atlas.templates import schaefer_crosscheck, templateflow_home

        for space in spaces:
            check = schaefer_crosscheck(out[space], space)
            if check is None:
                log(f"atlas {space}: no TemplateFlow Schaefer 2018 file in {templateflow_home()}: not cross-checked")
            else:
                log(f"atlas {space}: Schaefer labels agree with TemplateFlow's {Path(check['templateflow_file']).name} "
                    f"on {check['agreement']:.1%} of {check['common_voxels']} cortical voxels")
    make_world_readable(atlas_dir)
    if model:
        from bids_semantoks.model.hub import official_provenance, verify_official_with_hub

        prov = official_provenance(data_dir)
        path = Path(prov.path)
        rev = f" @ {prov.revision}" if prov.revision else ""
        log(f"model official: {path} [{prov.size} B, sha256 {prov.sha256[:12]}, {prov.how_obtained}{rev}, "
            f"label {prov.label}]")
        if verify:
            ok, message = verify_official_with_hub(data_dir)
            log(f"model verify: {message}")
            if ok and prov.label != "official":
                log(f"model official: now labelled {official_provenance(data_dir).label}")
        out["models"] = path.parent
        make_world_readable(path.parent)
    if data_dir is not None:
        make_world_readable(data_dir)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    from bids_semantoks.atlas.registry import SUPPORTED_SPACES

    parser = argparse.ArgumentParser(
        prog="python -m bids_semantoks.prefetch",
        description="Download and verify the atlases and the official model weights into the data cache.",
    )
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="data cache folder (default: $BIDS_SEMANTOKS_DATA or ~/.cache/bids_semantoks)")
    parser.add_argument("--spaces", nargs="+", default=list(SUPPORTED_SPACES), choices=SUPPORTED_SPACES,
                        metavar="SPACE", help=f"template spaces (default: all of {', '.join(SUPPORTED_SPACES)})")
    parser.add_argument("--skip-model", action="store_true", help="do not download the official model weights")
    parser.add_argument("--verify", action="store_true",
                        help="compare the cached weights with the sha256 the hub publishes (when the hub is reachable) "
                             "and the atlases with TemplateFlow's Schaefer 2018 files (when in $TEMPLATEFLOW_HOME)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EX_USAGE if exc.code else 0
    try:
        prefetch(args.data_dir, args.spaces, model=not args.skip_model, verify=args.verify,
                 log=lambda msg: print(f"prefetch: {msg}", flush=True))
    except BidsAppError as exc:
        print(f"prefetch: error: {exc}", file=sys.stderr)
        return exc.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
