"""Does pre-training learn? Pre-train on ABIDE (CC200), then linear probes vs random weights.

Steps (CPU, a few minutes):

1. Read ``../shared/data/abide_cc200`` in place (349 participants, NYU/UM_1 at TR 2 s,
   KKI at TR 2.5 s) with :func:`load_runs_from_derivatives` and the default preparation
   (resample to 2 s, z-score per region). Networks: the 9 labels of
   ``atlas-CC200_dseg.tsv`` (``AtlasTable.from_tsv``).
2. Pre-train a small encoder with :func:`run_pretrain` (options below; all 349
   participants, no labels used).
3. Embed every participant with the pre-trained teacher (``load_encoder`` on the model
   folder) and with the *same architecture at its random initialisation*: 8 evenly
   spaced 100-TR crops per run, ``encoder_features(...)["cls_avg"]`` per crop, mean over
   crops.
4. Linear probes on the subject embeddings (standardised):
   - dx (ASD vs TC): logistic regression, leave-one-site-out (3 folds), balanced accuracy;
   - sex: logistic regression (class-balanced), stratified 5-fold, balanced accuracy;
   - age: ridge regression, 5-fold, Pearson r and MAE (years).
   Regularisation is chosen by inner 5-fold CV (LogisticRegressionCV / RidgeCV).
   For reference the same probes on functional connectivity (Fisher-z correlations of
   the 200 regions, upper triangle, reduced to 128 principal components inside each
   training fold to keep the CPU time small) are also reported.

Usage::

    python benchmarks/abide_pretrain_probe.py --out /tmp/abide_pt [--epochs 30] [--size tiny]

    # docs/results_pretrain.md run C: 750 steps, eps scaled to the batch, 5 random-init seeds
    python benchmarks/abide_pretrain_probe.py --out /tmp/abide_b64 --name b64_eps04 --batch-size 64 \
        --epochs 150 --lr 1e-3 --eps 0.4 --checkpoint-every 25 --random-seeds 5

Writes ``<out>/probe_results.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error
from sklearn.model_selection import KFold, LeaveOneGroupOut, StratifiedKFold
from sklearn.preprocessing import StandardScaler

from bids_semantoks.atlas import AtlasTable
from bids_semantoks.model import Encoder, encoder_features, load_encoder
from bids_semantoks.pretrain import load_options, load_runs_from_derivatives, run_pretrain
from bids_semantoks.pretrain.run import build_encoder_config

ROOT = Path(__file__).resolve().parents[1]
ABIDE = ROOT / ".." / "shared" / "data" / "abide_cc200"


def crop_starts(length: int, n_crops: int = 8, crop: int = 100) -> np.ndarray:
    """Evenly spaced starts, ``linspace(0, L - 100, 8)`` truncated (MODEL_SPEC section 4)."""
    return np.linspace(0, max(length - crop, 0), n_crops).astype(int)


@torch.no_grad()
def embed_subjects(encoder: Encoder, runs) -> dict[str, np.ndarray]:
    """Subject-mean ``cls_avg`` over 8 crops of every run."""
    encoder.eval()
    per_subject: dict[str, list[np.ndarray]] = {}
    for r in runs:
        x = np.nan_to_num(r.data.T)  # [C, T]
        if x.shape[1] < 100:
            x = np.pad(x, ((0, 0), (0, 100 - x.shape[1])))
        crops = np.stack([x[:, s : s + 100] for s in crop_starts(x.shape[1])])
        feats = encoder_features(encoder(torch.from_numpy(crops).float()))["cls_avg"].numpy()
        per_subject.setdefault(r.subject, []).append(feats)
    return {s: np.concatenate(v).mean(0) for s, v in per_subject.items()}


@torch.no_grad()
def identification(encoder: Encoder, runs) -> float:
    """Label-free check: top-1 subject identification between the first and the last 100 TRs.

    One crop at the start and one at the end of each subject's run (they overlap by 24 TRs
    for NYU's 176 TRs, 10 for KKI, none for UM_1), ``cls_avg`` standardised over subjects,
    cosine similarity; accuracy of finding the same subject among all (chance 1/349).
    """
    encoder.eval()
    first, last = [], []
    for r in runs:
        x = torch.from_numpy(np.nan_to_num(r.data.T)).float()
        crops = torch.stack([x[:, :100], x[:, -100:]])
        f = encoder_features(encoder(crops))["cls_avg"].numpy()
        first.append(f[0])
        last.append(f[1])
    a, b = np.stack(first), np.stack(last)
    mu, sd = np.concatenate([a, b]).mean(0), np.concatenate([a, b]).std(0) + 1e-8
    a, b = (a - mu) / sd, (b - mu) / sd
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.mean(np.argmax(a @ b.T, axis=1) == np.arange(len(a))))


def fc_features(runs) -> dict[str, np.ndarray]:
    out = {}
    iu = None
    for r in runs:
        c = np.corrcoef(np.nan_to_num(r.data).T)
        c = np.nan_to_num(c)
        iu = iu or np.triu_indices_from(c, 1)
        out[r.subject] = np.arctanh(np.clip(c[iu], -0.999, 0.999))
    return out


def probe(x: np.ndarray, pheno: pd.DataFrame, seed: int = 0, pca: int | None = None) -> dict[str, float]:
    res = {}
    cs = np.logspace(-4, 2, 7)

    def make_pipeline(*steps):  # optional PCA after the scaler (FC reference)
        from sklearn.decomposition import PCA
        from sklearn.pipeline import make_pipeline as mp

        return mp(steps[0], PCA(pca, random_state=seed), *steps[1:]) if pca else mp(*steps)

    y_dx = (pheno["dx"] == "ASD").to_numpy().astype(int)
    pred = np.zeros_like(y_dx)
    for tr, te in LeaveOneGroupOut().split(x, y_dx, pheno["site"]):
        clf = make_pipeline(StandardScaler(), LogisticRegressionCV(
            Cs=cs, cv=5, class_weight="balanced", scoring="balanced_accuracy", max_iter=2000))
        pred[te] = clf.fit(x[tr], y_dx[tr]).predict(x[te])
    res["dx_bacc_leave_site_out"] = balanced_accuracy_score(y_dx, pred)
    y_sex = (pheno["sex"] == "F").to_numpy().astype(int)
    pred = np.zeros_like(y_sex)
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y_sex):
        clf = make_pipeline(StandardScaler(), LogisticRegressionCV(
            Cs=cs, cv=5, class_weight="balanced", scoring="balanced_accuracy", max_iter=2000))
        pred[te] = clf.fit(x[tr], y_sex[tr]).predict(x[te])
    res["sex_bacc_5fold"] = balanced_accuracy_score(y_sex, pred)
    y_age = pheno["age"].to_numpy(float)
    pred_age = np.zeros_like(y_age)
    for tr, te in KFold(5, shuffle=True, random_state=seed).split(x):
        reg = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 5, 13)))
        pred_age[te] = reg.fit(x[tr], y_age[tr]).predict(x[te])
    res["age_r_5fold"] = float(np.corrcoef(y_age, pred_age)[0, 1])
    res["age_mae_5fold"] = mean_absolute_error(y_age, pred_age)
    return {k: float(v) for k, v in res.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=ABIDE)
    ap.add_argument("--size", default="tiny", choices=["tiny", "small", "base"])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eps", type=float, default=None,
                    help="coding-rate epsilon (default 0.05; 'p/(m eps)' = 5 at the paper's batch 512)")
    ap.add_argument("--name", default=None, help="model folder name (default abide_<size>)")
    ap.add_argument("--reuse", action="store_true", help="reuse an existing model folder in --out")
    ap.add_argument("--warmup-epochs", type=float, default=None, help="LR warm-up (default max(1, 5%% of epochs))")
    ap.add_argument("--checkpoint-every", type=int, default=None,
                    help="write model every N epochs (default: only at the end); lets --reuse probe a stopped run")
    ap.add_argument("--random-seeds", type=int, default=1,
                    help="random-init baselines with seeds seed..seed+N-1 (noise level of the baseline)")
    ap.add_argument("--probe-seed", type=int, default=None,
                    help="seed of the probe folds (default --seed); fix it to compare pre-training seeds")
    ap.add_argument("--probe-repeats", type=int, default=1,
                    help="repeat the probes with fold seeds probe-seed..probe-seed+K-1 and report the means "
                         "(sex and age folds change; dx is leave-site-out and does not)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning)  # sklearn API transition notices
    torch.set_num_threads(args.threads or max(torch.get_num_threads(), 1))

    atlas = AtlasTable.from_tsv(args.data / "atlas-CC200" / "atlas-CC200_dseg.tsv")
    t0 = time.perf_counter()
    runs = load_runs_from_derivatives(args.data, [atlas.label])
    t_load = time.perf_counter() - t0
    pheno = pd.read_csv(args.data / "participants.tsv", sep="\t")
    pheno["subject"] = pheno["participant_id"].str.removeprefix("sub-")

    options = load_options("small", overrides={
        "model_size": args.size, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "seed": args.seed, "name": args.name or f"abide_{args.size}", "coding_rate_eps": args.eps,
        "device": "cpu", "checkpoint_every": args.checkpoint_every or max(args.epochs, 1),
        "warmup_epochs": args.warmup_epochs if args.warmup_epochs is not None else max(1.0, 0.05 * args.epochs),
        "progress": False,
    })
    kw = dict(network_names=list(atlas.networks), channel_networks=atlas.network_index.tolist(),
              channel_names=list(atlas.names), atlas_label=atlas.label)
    folder = args.out / "models" / options.name
    t0 = time.perf_counter()
    if not (args.reuse and (folder / "model.safetensors").is_file()):
        folder = run_pretrain(options, runs, args.out, **kw)
    t_train = time.perf_counter() - t0

    trained = load_encoder(folder)
    config = build_encoder_config(options, kw["network_names"], kw["channel_networks"])
    t0 = time.perf_counter()
    emb = {"pretrained": embed_subjects(trained, runs)}
    ident = {"pretrained": identification(trained, runs)}
    for k in range(args.random_seeds):
        seed = options.seed + k
        name = "random init" if k == 0 else f"random init (seed {seed})"
        torch.manual_seed(seed)
        random_init = Encoder(config)
        emb[name] = embed_subjects(random_init, runs)
        ident[name] = identification(random_init, runs)
    emb["FC (reference)"] = fc_features(runs)
    t_embed = time.perf_counter() - t0
    logging.info("embedding: %.0f s", t_embed)

    subjects = sorted(set(pheno["subject"]) & set(emb["pretrained"]))
    ph = pheno.set_index("subject").loc[subjects].reset_index()
    results = {}
    for name, feats in emb.items():
        t0 = time.perf_counter()
        first = args.seed if args.probe_seed is None else args.probe_seed
        runs_k = [probe(np.stack([feats[s] for s in subjects]), ph, first + k,
                        pca=128 if name.startswith("FC") else None) for k in range(args.probe_repeats)]
        results[name] = {key: float(np.mean([r[key] for r in runs_k])) for key in runs_k[0]}
        logging.info("probes on %s: %.0f s", name, time.perf_counter() - t0)
    epoch_log = pd.read_csv(folder / "training" / "epoch_log.tsv", sep="\t", na_values="n/a")
    doc = {
        "n_subjects": len(subjects), "options": options.model_dump(mode="json"), "probe_repeats": args.probe_repeats,
        "seconds": {"load": t_load, "pretrain": t_train, "embed": t_embed},
        "epochs_logged": int(len(epoch_log)),
        "loss_tok_last_epoch": float(epoch_log["loss_tok"].iloc[-1]),
        "loss_first_epoch": float(epoch_log["loss"].iloc[0]), "loss_last_epoch": float(epoch_log["loss"].iloc[-1]),
        "proj_erank_last_epoch": float(epoch_log["proj_erank"].iloc[-1]),
        "chance": {"dx_bacc_leave_site_out": 0.5, "sex_bacc_5fold": 0.5},
        "results": results,
        "identification_top1": ident,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "probe_results.json").write_text(json.dumps(doc, indent=2))
    if args.probe_repeats > 1:
        print(f"\nprobe scores: means over {args.probe_repeats} fold seeds")
    print(f"\n{len(subjects)} subjects; pre-training {t_train:.0f} s ({options.model_size}, {options.epochs} epochs, "
          f"batch {options.batch_size}); loss {doc['loss_first_epoch']:.3f} -> {doc['loss_last_epoch']:.3f}\n")
    print("| features | dx bal. acc. (leave-site-out) | sex bal. acc. (5-fold) | age r (5-fold) | age MAE (y) "
          "| identification top-1 |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        idt = f"{ident[name]:.3f}" if name in ident else "-"
        print(f"| {name} | {r['dx_bacc_leave_site_out']:.3f} | {r['sex_bacc_5fold']:.3f} | "
              f"{r['age_r_5fold']:.3f} | {r['age_mae_5fold']:.2f} | {idt} |")
    print("\nsubject identification (first vs last 100 TRs, top-1, chance "
          f"{1 / len(subjects):.4f}): " + ", ".join(f"{k} {v:.3f}" for k, v in ident.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
