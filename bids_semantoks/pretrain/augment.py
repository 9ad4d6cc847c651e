"""Views, augmentations and token masks, generated on the training device.

Everything here is batched tensor code (no per-sample Python loops, no DataLoader
workers): with the packed series already on the GPU, a step's input is built by a few
kernels while the GPU never waits on Python.

Randomness and distributed training: every function draws its random numbers for the
*global* batch ``[V, B_global, ...]`` from one generator seeded identically on every
process, then keeps the rows ``rows`` of this process. A run on W processes therefore
sees exactly the views and masks of one process holding the whole batch (the price is
drawing W times more random numbers, negligible next to the encoder).

Recipe (MODEL_SPEC section 5), per subject and step:

- one run chosen uniformly among the subject's runs (the runs are z-scored already);
- ``V = 2`` crops of 100 TRs with independent uniform starts in ``[0, T - 100]``; runs
  shorter than 100 TRs start at 0 and are zero-padded at the end;
- per view, in this order: zero ``max(1, floor(u * C))`` random regions with
  ``u ~ U(0, 0.1)``; zero one contiguous block of ``max(1, floor(u * 100))`` TRs with
  ``u ~ U(0, 0.3)`` at a uniform start; multiply by ``U(0.8, 1.2)``; add ``N(0, 0.1^2)``
  noise (also on the zeroed entries);
- masks over the ``N x P`` token grid (9 x 5), one per view and sample, used on a step
  with probability 0.5: with probability 0.5 "temporal" (``k`` in {3, 4} contiguous
  patches, all networks), else "network" (all patches of ``k`` in {5, 6} random networks).
  For ``N`` networks / ``P`` patches the counts scale as ``round(k * N / 9)`` and
  ``round(k * P / 5)``, clipped to ``[1, N - 1]`` / ``[1, P - 1]`` so that something
  always stays visible; with a single network only temporal masks are drawn.
"""

from __future__ import annotations

import torch

from bids_semantoks.pretrain.data import PretrainData
from bids_semantoks.pretrain.options import PretrainOptions

__all__ = ["sample_views", "augment_views", "sample_masks", "mask_counts"]


def _uniform(shape: tuple[int, ...], g: torch.Generator, rows: slice, device) -> torch.Tensor:
    """U(0, 1) for the global batch (dim 1 = batch), sliced to this process's rows."""
    return torch.rand(shape, generator=g, device=device)[:, rows]


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank of each entry along the last dim (0 = smallest): a uniform random permutation."""
    return scores.argsort(dim=-1).argsort(dim=-1)


def sample_views(
    data: PretrainData,
    subjects: torch.Tensor,
    n_views: int,
    crop_len: int,
    g: torch.Generator,
    rows: slice = slice(None),
) -> torch.Tensor:
    """Random crops of one random run per subject.

    Parameters
    ----------
    data : PretrainData
        Packed series (on the device of ``g``).
    subjects : Tensor [B_global] int64
        Subject indices of the global batch.
    n_views, crop_len : int
        Views per subject (2) and crop length in TRs (100).
    g : torch.Generator
        Generator on ``data.device``, seeded identically on every process.
    rows : slice
        Rows of the global batch kept by this process.

    Returns
    -------
    Tensor [V, b, C, crop_len] float32
    """
    device = data.device
    n = subjects.shape[0]
    u_run = torch.rand((1, n), generator=g, device=device)[:, rows][0]
    u_start = _uniform((n_views, n), g, rows, device)
    subj = subjects[rows]
    run = data.subject_first_run[subj] + (u_run * data.subject_n_runs[subj]).long().clamp_max(
        data.subject_n_runs[subj] - 1
    )
    length = data.run_length[run]  # [b]
    span = (length - crop_len + 1).clamp_min(1)
    start = (u_start * span).long().clamp_max(span - 1)  # [V, b]
    t = torch.arange(crop_len, device=device)
    pos = start[..., None] + t  # [V, b, T]
    valid = pos < length[None, :, None]
    index = (data.run_offset[run][None, :, None] + pos).clamp_max(data.series.shape[0] - 1)
    x = data.series[index].float()  # [V, b, T, C]
    x = x * valid[..., None]
    return x.transpose(-1, -2).contiguous()


def augment_views(x: torch.Tensor, options: PretrainOptions, g: torch.Generator, n_global: int,
                  rows: slice = slice(None)) -> torch.Tensor:
    """Region dropout, time-block dropout, scaling and noise (see module docstring).

    Parameters
    ----------
    x : Tensor [V, b, C, T]
        Views of this process's rows.
    n_global : int
        Global batch size (the random draws are made for all rows).

    Returns
    -------
    Tensor [V, b, C, T] (new tensor)
    """
    v, _, c, t = x.shape
    device = x.device
    # regions
    n_drop = (_uniform((v, n_global), g, rows, device) * options.region_drop_max * c).floor().clamp_min(1)
    region_rank = _ranks(torch.rand((v, n_global, c), generator=g, device=device)[:, rows])
    keep_region = region_rank >= n_drop[..., None]  # [V, b, C]
    # time block
    block = (_uniform((v, n_global), g, rows, device) * options.time_block_max * t).floor().clamp(1, t)
    b_start = (_uniform((v, n_global), g, rows, device) * (t - block + 1)).floor()
    tt = torch.arange(t, device=device)
    keep_time = (tt < b_start[..., None]) | (tt >= (b_start + block)[..., None])  # [V, b, T]
    # scale and noise
    lo, hi = options.scale_range
    scale = lo + (hi - lo) * _uniform((v, n_global), g, rows, device)
    noise = torch.randn((v, n_global, c, t), generator=g, device=device)[:, rows]
    keep = keep_region[..., None] & keep_time[..., None, :]
    return x * keep * scale[..., None, None] + options.noise_sd * noise


def _round(x: float) -> int:
    return int(x + 0.5)


def mask_counts(options: PretrainOptions, n_networks: int, n_patches: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(patches lo, hi) and (networks lo, hi) scaled from the 9 x 5 grid to ``N x P``."""
    def scale(pair, size, ref):
        hi_cap = max(size - 1, 1)
        return tuple(min(max(_round(k * size / ref), 1), hi_cap) for k in pair)

    return scale(options.mask_patches, n_patches, 5), scale(options.mask_networks, n_networks, 9)


def sample_masks(
    n_views: int,
    n_global: int,
    n_networks: int,
    n_patches: int,
    options: PretrainOptions,
    g: torch.Generator,
    rows: slice = slice(None),
) -> torch.Tensor:
    """One temporal-or-network mask per view and sample.

    Returns
    -------
    Tensor [V, b, N, P] bool
        True = token replaced by the mask embedding.
    """
    device = g.device
    (p_lo, p_hi), (n_lo, n_hi) = mask_counts(options, n_networks, n_patches)
    shape = (n_views, n_global)
    temporal = _uniform(shape, g, rows, device) < options.temporal_mask_prob
    if n_networks < 2:
        temporal = torch.ones_like(temporal)
    # temporal: k contiguous patches, all networks
    k_t = p_lo + (_uniform(shape, g, rows, device) * (p_hi - p_lo + 1)).floor().clamp_max(p_hi - p_lo)
    t_start = (_uniform(shape, g, rows, device) * (n_patches - k_t + 1)).floor()
    pp = torch.arange(n_patches, device=device)
    t_mask = (pp >= t_start[..., None]) & (pp < (t_start + k_t)[..., None])  # [V, b, P]
    # network: k random networks, all patches
    k_n = n_lo + (_uniform(shape, g, rows, device) * (n_hi - n_lo + 1)).floor().clamp_max(n_hi - n_lo)
    net_rank = _ranks(torch.rand((n_views, n_global, n_networks), generator=g, device=device)[:, rows])
    n_mask = net_rank < k_n[..., None]  # [V, b, N]
    return torch.where(
        temporal[..., None, None],
        t_mask[..., None, :].expand(-1, -1, n_networks, -1),
        n_mask[..., None].expand(-1, -1, -1, n_patches),
    )
