"""Model-ready series -> crops -> teacher encoder -> embedding tables.

Per run (MODEL_SPEC section 4): ``n_crops`` (8) evenly spaced 100-TR windows, starts
``linspace(0, L - 100, n_crops)`` truncated to integers (duplicates removed); a run shorter
than one window gives one zero-padded crop and a warning. Regions without data are set to 0
(the z-scored mean); networks without any data are replaced by the mask embedding on all
patches. Features per crop: ``cls_avg`` = [mean of the patch tokens, CLS].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

LOGGER = logging.getLogger("bids_semantoks")
WINDOW = 100


@dataclass
class RunEmbedding:
    """Embedding of one run."""

    features: np.ndarray  # [n_crops, 2D]
    onsets: np.ndarray  # [n_crops] seconds
    masked_networks: list[str]
    zero_filled_regions: list[str]
    padded: bool
    warnings: list[str] = field(default_factory=list)
    tokens: np.ndarray | None = None  # [n_crops, N, D] per-network tokens (mean over patches)


def crop_starts(n_samples: int, n_crops: int = 8, window: int = WINDOW) -> np.ndarray:
    """Evenly spaced crop starts, e.g. 0, 11, 22, 34, 45, 57, 68, 80 for 180 samples."""
    if n_samples <= window:
        return np.array([0])
    starts = np.linspace(0, n_samples - window, n_crops).astype(int)
    return np.unique(starts)


def make_crops(data: np.ndarray, n_crops: int = 8, window: int = WINDOW,
               segments: list[list[int]] | None = None) -> tuple[np.ndarray, np.ndarray, bool]:
    """Cut ``data`` [T, C] into crops [n, C, window] (zero padded at the end if short).

    ``segments``: the ``[start, stop)`` rows that are contiguous in time (the time-series
    sidecar's ``ContiguousSegments``, after censoring or volumes removed upstream). With more
    than one, no crop spans two of them (:func:`~bids_semantoks.extract.signal.crop_starts_in_segments`);
    when none is a window long, the longest segment alone is one zero-padded crop.
    """
    n_samples, n_channels = data.shape
    if segments is not None and len(segments) > 1:
        from bids_semantoks.extract.signal import crop_starts_in_segments

        starts, fallback = crop_starts_in_segments(segments, n_crops, window)
        if len(starts):
            return np.stack([data[s: s + window].T for s in starts]).astype(np.float32), starts, False
        a, b = fallback if fallback is not None else (0, min(n_samples, window))
        x = np.zeros((1, n_channels, window), dtype=np.float32)
        x[0, :, : b - a] = data[a:b].T
        return x, np.array([a]), True
    starts = crop_starts(n_samples, n_crops, window)
    padded = n_samples < window
    if padded:
        x = np.zeros((1, n_channels, window), dtype=np.float32)
        x[0, :, :n_samples] = data.T
        return x, starts, True
    x = np.stack([data[s : s + window].T for s in starts]).astype(np.float32)
    return x, starts, False


@dataclass
class _Prepared:
    crops: np.ndarray  # [n, C, WINDOW]
    starts: np.ndarray
    padded: bool
    masked_ids: list[int]
    zero_filled: list[str]
    warnings: list[str]


def _prepare(data, region_names, n_net: int, channel_networks: np.ndarray, n_crops: int,
             segments: list[list[int]] | None = None) -> _Prepared:
    data = np.asarray(data, dtype=np.float64)
    missing = ~np.isfinite(data).all(axis=0)
    masked_ids = [n for n in range(n_net) if missing[channel_networks == n].all()]
    zero_filled = [region_names[i] for i in np.flatnonzero(missing) if channel_networks[i] not in masked_ids]
    clean = np.where(np.isfinite(data), data, 0.0)
    crops, starts, padded = make_crops(clean, n_crops, segments=segments)
    warnings = []
    split = segments is not None and len(segments) > 1
    if padded and split:
        warnings.append(f"no contiguous stretch of {WINDOW} samples between censored volumes; the longest "
                        "one zero-padded as the only crop")
    elif padded:
        warnings.append(
            f"run has {data.shape[0]} samples (< {WINDOW}); one crop zero-padded at the end"
        )
    elif split and len(starts) < n_crops:
        warnings.append(f"censoring leaves {len(starts)} distinct crops within contiguous stretches")
    elif len(starts) < n_crops:
        warnings.append(f"run has {data.shape[0]} samples; only {len(starts)} distinct crops")
    return _Prepared(crops, starts, padded, masked_ids, zero_filled, warnings)


def embed_series(
    encoder,
    data: np.ndarray,
    region_names: list[str] | tuple[str, ...],
    network_names: list[str] | tuple[str, ...],
    channel_networks: np.ndarray,
    *,
    tr: float = 2.0,
    n_crops: int = 8,
    batch_size: int = 64,
    device: str = "cpu",
    save_tokens: bool = False,
) -> RunEmbedding:
    """Embed one model-ready run.

    Parameters
    ----------
    encoder : bids_semantoks.model.Encoder
        Teacher encoder in eval mode.
    data : ndarray, shape (T, C)
        z-scored series at the model TR; NaN columns are regions without data.
    region_names, network_names : sequence of str
        Channel names and network names (token order).
    channel_networks : ndarray of int, shape (C,)
        Network id of every channel.
    """
    return embed_runs(encoder, [data], region_names, network_names, channel_networks, tr=tr, n_crops=n_crops,
                      batch_size=batch_size, device=device, save_tokens=save_tokens)[0]


def embed_runs(
    encoder,
    runs: list[np.ndarray],
    region_names: list[str] | tuple[str, ...],
    network_names: list[str] | tuple[str, ...],
    channel_networks: np.ndarray,
    *,
    tr: float = 2.0,
    n_crops: int = 8,
    batch_size: int = 64,
    device: str = "cpu",
    save_tokens: bool = False,
    segments: list[list[list[int]] | None] | None = None,
) -> list[RunEmbedding]:
    """Embed many model-ready runs, their crops batched together through the encoder.

    Same result per run as :func:`embed_series` on that run alone: the crops of all runs
    are stacked and cut into batches of ``batch_size`` (crops of runs with masked networks
    go in batches of their own, with their mask), so a cohort needs few forward passes.

    Parameters
    ----------
    runs : list of ndarray, shape (T_i, C)
        z-scored series at the model TR, one per run.
    segments : list, optional
        Per run, its contiguous ``[start, stop)`` row stretches (sidecar ``ContiguousSegments``)
        or None; crops never span two stretches (see :func:`make_crops`).
    Other parameters are those of :func:`embed_series`.

    Returns
    -------
    list of RunEmbedding
        One per run, in the order of ``runs``.
    """
    import torch

    from bids_semantoks.model import encoder_features

    channel_networks = np.asarray(channel_networks)
    n_net = len(network_names)
    n_patches = encoder.config.n_patches
    segments = segments or [None] * len(runs)
    prepared = [_prepare(d, region_names, n_net, channel_networks, n_crops, seg) for d, seg in zip(runs, segments)]
    feats: list[np.ndarray | None] = [None] * len(runs)
    toks: list[np.ndarray | None] = [None] * len(runs)

    def forward(indices: list[int], with_mask: bool) -> None:
        if not indices:
            return
        crops = np.concatenate([prepared[i].crops for i in indices])
        mask = None
        if with_mask:
            mask = np.zeros((crops.shape[0], n_net, n_patches), dtype=bool)
            row = 0
            for i in indices:
                n = prepared[i].crops.shape[0]
                mask[row: row + n, prepared[i].masked_ids, :] = True
                row += n
        out_f, out_t = [], []
        with torch.inference_mode():
            for lo in range(0, crops.shape[0], batch_size):
                xb = torch.from_numpy(crops[lo: lo + batch_size]).to(device)
                mb = None if mask is None else torch.from_numpy(mask[lo: lo + batch_size]).to(device)
                tokens = encoder(xb, mask=mb)
                out_f.append(encoder_features(tokens)["cls_avg"].float().cpu().numpy())
                if save_tokens:
                    patch = tokens[:, 1:].reshape(tokens.shape[0], n_net, n_patches, -1).mean(dim=2)
                    out_t.append(patch.float().cpu().numpy())
        all_f = np.concatenate(out_f)
        all_t = np.concatenate(out_t) if save_tokens else None
        row = 0
        for i in indices:
            n = prepared[i].crops.shape[0]
            feats[i] = all_f[row: row + n]
            if all_t is not None:
                toks[i] = all_t[row: row + n]
            row += n

    forward([i for i, p in enumerate(prepared) if not p.masked_ids], with_mask=False)
    forward([i for i, p in enumerate(prepared) if p.masked_ids], with_mask=True)
    return [
        RunEmbedding(
            features=np.asarray(feats[i]).astype(np.float32),
            onsets=p.starts.astype(float) * tr,
            masked_networks=[network_names[j] for j in p.masked_ids],
            zero_filled_regions=p.zero_filled,
            padded=p.padded,
            warnings=p.warnings,
            tokens=toks[i] if save_tokens else None,
        )
        for i, p in enumerate(prepared)
    ]


def feature_columns(dim: int) -> list[str]:
    """Column names of ``cls_avg``: ``avg_0000..``, then ``cls_0000..``."""
    return [f"avg_{i:04d}" for i in range(dim)] + [f"cls_{i:04d}" for i in range(dim)]


def embedding_frame(emb: RunEmbedding) -> pd.DataFrame:
    dim = emb.features.shape[1] // 2
    frame = pd.DataFrame(emb.features.astype(np.float64), columns=feature_columns(dim))
    frame.insert(0, "onset", emb.onsets)
    frame.insert(0, "crop", np.arange(len(emb.onsets)))
    return frame
