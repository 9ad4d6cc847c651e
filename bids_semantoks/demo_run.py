"""Run the whole app on the embedded demo: ``python -m bids_semantoks.demo_run DIR``.

1. write a synthetic fMRIPrep dataset (``DIR/fmriprep``, 8 subjects, TR 1.5 s);
2. ``participant`` with the official weights when they are in the data cache, otherwise a
   tiny *random* demo model (labelled ``demotinyrandom`` in every output and log);
3. ``pretrain`` a tiny model on the demo's own time series (about a minute on CPU);
4. ``participant --model DIR/derivatives/models/<name>`` with that model;
5. ``group``: probes of the demo phenotypes from embeddings and from connectivity.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

LOGGER = logging.getLogger("bids_semantoks")


def _official_cached() -> bool:
    """True when the official weights are already in the data cache (checked offline)."""
    from bids_semantoks.errors import BidsAppError
    from bids_semantoks.model import fetch_official

    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        fetch_official()
        return True
    except BidsAppError:
        return False
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def make_demo_model(folder: Path, network_names, channel_networks, seed: int = 0) -> Path:
    """A tiny encoder with random weights, saved in our model-folder format and marked as a demo."""
    import torch

    from bids_semantoks.model import Encoder, model_preset, save_encoder

    torch.manual_seed(seed)
    encoder = Encoder(model_preset("tiny", list(network_names), list(channel_networks))).eval()
    with torch.no_grad():  # initialise the long-convolution kernel norms like a first forward
        encoder(torch.zeros(1, len(channel_networks), 100))
    return save_encoder(encoder, folder, metadata={"demo": True, "description": "random weights, demo only"})


def _cli(*args) -> None:
    from bids_semantoks.cli import main

    print("$ bids_semantoks " + " ".join(str(a) for a in args), flush=True)
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        if exc.code:
            raise SystemExit(f"demo step failed with exit code {exc.code}") from None


def main(argv: list[str] | None = None) -> int:
    from bids_semantoks.atlas import registry
    from bids_semantoks.demo import make_dataset

    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else "demo_out").resolve()
    fmriprep, out = root / "fmriprep", root / "derivatives"
    atlas = registry.get_default_atlas("MNI152NLin2009cAsym")
    if not (fmriprep / "dataset_description.json").is_file():
        make_dataset(fmriprep, atlas.dseg_img_path, atlas.table.network_index,
                     subjects=tuple(f"{i + 1:02d}" for i in range(8)), n_vols=240, tr=1.5, voxel_mm=4.0, res="4")
    common = ["--nprocs", "2", "-w", root / "work"]
    if _official_cached():
        model = "official"
    else:
        model = make_demo_model(root / "demo_model" / "demotinyrandom", atlas.table.networks,
                                atlas.table.network_index.tolist())
        print("official weights not in the data cache: using a tiny RANDOM demo model (outputs say so)")
    _cli(fmriprep, out, "participant", "--model", model, *common)
    _cli(fmriprep, out, "pretrain", "--model-size", "tiny", "--epochs", "20", "--batch-size", "8",
         "--model-name", "demo", "--random-seed", "0", *common)
    _cli(fmriprep, out, "participant", "--model", out / "models" / "demo", *common)
    _cli(fmriprep, out, "group", "--target", "group", "--target", "age", "--model-label", "demo",
         "--cv-folds", "2", "--cv-repeats", "2", *common)
    print(f"\ndemo finished: outputs in {out}; report: {out / 'group' / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
