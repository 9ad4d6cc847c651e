"""Inputs are never touched: BIDS_DIR hashed before and after every level; a read-only BIDS_DIR,
atlas cache and model cache work (real read-only mounts: we run as root)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import stat

import pandas as pd
from reliability_helpers import CAN_MOUNT, PARITY_CKPT, invalid_outputs, output_files, read_only, tree_state

from tests.conftest import SHARED_ATLASES


def _readable_by_all(out):
    private = [str(p.relative_to(out)) for p in output_files(out)
               if not p.stat().st_mode & stat.S_IROTH and p.name != ".bids_semantoks.lock"]
    assert private == [], f"outputs not readable by others: {private}"


def test_every_level_leaves_bids_dir_unchanged(cli, tiny_bids, tmp_path, monkeypatch):
    """participant (embeddings, from a read-only model cache) -> rerun -> pretrain -> group, on a
    read-only BIDS_DIR and a read-only atlas cache; BIDS_DIR hashed around every level."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # a model cache holding the 'official' file and its sha256 record, then mounted read-only
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    payload = PARITY_CKPT.read_bytes()
    (data / "models" / "brainsemantoks_ckpt_epoch_100.pth").write_bytes(payload)
    (data / "models" / "brainsemantoks_ckpt_epoch_100.pth.sha256.json").write_text(json.dumps(
        {"file": "brainsemantoks_ckpt_epoch_100.pth", "sha256": hashlib.sha256(payload).hexdigest(),
         "size": len(payload), "how_obtained": "hub-download", "revision": "0" * 40,
         "hub_sha256": hashlib.sha256(payload).hexdigest()}))
    atlases = tmp_path / "atlases"
    pheno = tmp_path / "pheno.tsv"
    pd.DataFrame({"participant_id": ["sub-01", "sub-02"], "score": [1.0, 2.0]}).to_csv(pheno, sep="\t", index=False)
    out = tmp_path / "out"
    before = tree_state(tiny_bids)
    with contextlib.ExitStack() as stack:
        if CAN_MOUNT:
            stack.enter_context(read_only(tiny_bids))
            stack.enter_context(read_only(data))
            stack.enter_context(read_only(SHARED_ATLASES, atlases))
            monkeypatch.setenv("BIDS_SEMANTOKS_ATLAS_DIR", str(atlases))
            probe = tiny_bids / "probe"
            try:
                probe.write_text("x")
                raise AssertionError("the read-only mount is writable")
            except OSError:
                pass
        common = ("--data-dir", data, "--device", "cpu")
        r = cli(tiny_bids, out, "participant", "--model", "official", *common)
        assert r.code == 0, r.err
        assert tree_state(tiny_bids) == before
        assert len(list(out.rglob("*_desc-official_embedding.tsv"))) == 4  # 2 runs + 2 subject means
        r = cli(tiny_bids, out, "participant", "--model", "official", *common)  # rerun: nothing to do
        assert r.code == 0, r.err
        r = cli(tiny_bids, out, "pretrain", "--model-size", "tiny", "--epochs", "1", "--batch-size", "2",
                "--model-name", "tinyrun", *common)
        assert r.code == 0, r.err
        assert (out / "models" / "tinyrun" / "model.safetensors").is_file()
        r = cli(tiny_bids, out, "group", "--target", "score", "--phenotypes", pheno, "--cv-folds", "2",
                "--cv-repeats", "1", "--n-permutations", "0")
        group_code, group_err = r.code, r.err
    assert tree_state(tiny_bids) == before
    assert invalid_outputs(out) == []
    _readable_by_all(out)
    # two subjects are too few to probe: a clear refusal, not a crash (and still no input touched)
    assert group_code in (0, 65), group_err
    shutil.rmtree(out)
