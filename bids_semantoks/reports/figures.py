"""Figures of the participant QC page, as deterministic SVG data URIs.

Figures are drawn on :class:`matplotlib.figure.Figure` objects (no pyplot, no global
backend switch) and saved as SVG with a fixed ``svg.hashsalt`` and no date, so the
same data give the same bytes and an identical rerun leaves the page untouched.
Each figure is returned as a ``data:image/svg+xml;base64,...`` URI for an ``<img>``
tag: element ids inside the SVGs cannot clash, and the page stays self-contained.
"""

from __future__ import annotations

import base64
import io

import numpy as np

#: Colour of n/a (regions without data) in every figure.
NA_COLOR = "#e6a23c"
CENSOR_COLOR = "#d62728"
_RC = {
    "svg.hashsalt": "bids_semantoks-qc",
    "svg.fonttype": "path",
    "font.size": 8.5,
    "axes.titlesize": 9.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "image.interpolation": "nearest",
}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _svg(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def network_colors(networks: list[str]) -> dict[str, str]:
    """A stable colour per network name (tab10/tab20 order of first appearance)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(networks) <= 10 else "tab20"]
    return {name: matplotlib.colors.to_hex(cmap(i % cmap.N)) for i, name in enumerate(networks)}


def _segments(mask: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs of True in ``mask`` as (start, stop) index pairs."""
    padded = np.r_[False, np.asarray(mask, bool), False].astype(int)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def fd_figure(fd: np.ndarray, tr: float | None, censored: np.ndarray | None, threshold: float | None,
              censor_label: str) -> str:
    """Framewise displacement per volume, censored volumes shaded, the threshold dashed.

    Parameters
    ----------
    fd : ndarray, shape (T,)
        Framewise displacement (mm); NaN where undefined (the first volume).
    tr : float or None
        Acquisition repetition time (s), for a time axis on top.
    censored : ndarray of bool or None
        Volumes removed before cleaning.
    threshold : float or None
        FD threshold of the scrubbing strategy (mm).
    censor_label : str
        Legend text of the shaded volumes (says whether the mask is exact or estimated).
    """
    import matplotlib

    with matplotlib.rc_context(_RC):
        fig = _figure(10.5, 2.3)
        ax = fig.add_subplot()
        x = np.arange(len(fd))
        ax.plot(x, fd, color="#1f4e79", lw=0.9, label="framewise displacement")
        if censored is not None and censored.any():
            for k, (a, b) in enumerate(_segments(censored)):
                ax.axvspan(a - 0.5, b - 0.5, color=CENSOR_COLOR, alpha=0.25, lw=0,
                           label=censor_label if k == 0 else None)
        if threshold is not None:
            ax.axhline(threshold, color="k", ls="--", lw=0.8, label=f"threshold {threshold:g} mm")
        ax.set_xlim(-0.5, max(len(fd) - 0.5, 0.5))
        finite = fd[np.isfinite(fd)]
        top = max(float(finite.max()) if finite.size else 0.0, threshold or 0.0, 0.1) * 1.1
        ax.set_ylim(0, top)
        ax.set_xlabel("volume (acquisition order)")
        ax.set_ylabel("FD (mm)")
        if tr:
            sec = ax.secondary_xaxis("top", functions=(lambda v: v * tr, lambda s: s / tr))
            sec.set_xlabel("time (s)")
        ax.legend(loc="upper right", fontsize=7.5, frameon=True, ncols=3)
        return _svg(fig)


def carpet_figure(data: np.ndarray, region_networks: list[str], network_order: list[str], tr: float | None,
                  crops: list[tuple[float, float]]) -> str:
    """Carpet plot of the model-ready series: regions (grouped by network) x samples.

    Parameters
    ----------
    data : ndarray, shape (T, R)
        z-scored series; NaN for regions without data (drawn in :data:`NA_COLOR`).
    region_networks : list of str
        Network of each column.
    network_order : list of str
        Order of the network blocks (top to bottom).
    tr : float or None
        Sampling interval of the rows (s).
    crops : list of (start, stop)
        Crop spans in samples (drawn as bars above the carpet).
    """
    import matplotlib

    with matplotlib.rc_context(_RC):
        n_t, n_r = data.shape
        rank = {name: i for i, name in enumerate(network_order)}
        order = sorted(range(n_r), key=lambda j: (rank.get(region_networks[j], len(rank)), j))
        ordered = data[:, order].T if n_r else np.zeros((0, n_t))
        nets = [region_networks[j] for j in order]
        colors = network_colors(network_order)
        crop_h = 0.16 * len(crops) + 0.1 if crops else 0.01
        fig = _figure(10.5, 3.8 + crop_h)
        grid = fig.add_gridspec(2, 2, height_ratios=[crop_h, 3.8], width_ratios=[1, 60], hspace=0.02, wspace=0.01)
        ax_crop = fig.add_subplot(grid[0, 1])
        ax_net = fig.add_subplot(grid[1, 0])
        ax = fig.add_subplot(grid[1, 1], sharex=ax_crop)
        cmap = matplotlib.colormaps["gray"].with_extremes(bad=NA_COLOR)
        masked = np.ma.masked_invalid(ordered)
        im = ax.imshow(masked, aspect="auto", cmap=cmap, vmin=-2.5, vmax=2.5,
                       extent=(-0.5, n_t - 0.5, n_r - 0.5, -0.5))
        ax.set_yticks([])
        ax.set_xlabel("sample of the model-ready series" + (f" (1 sample = {tr:g} s)" if tr else ""))
        # network strip, with labels at the middle of each block
        strip = np.array([[matplotlib.colors.to_rgb(colors.get(n, "#999999"))] for n in nets]) if nets else \
            np.zeros((0, 1, 3))
        ax_net.imshow(strip, aspect="auto", extent=(0, 1, n_r - 0.5, -0.5))
        ax_net.set_xticks([])
        ticks, labels = _network_ticks(nets, network_order)
        ax_net.set_yticks(ticks, labels, fontsize=7.5)
        for spine in ax_net.spines.values():
            spine.set_visible(False)
        ax_net.tick_params(length=0)
        # crops: one lane per crop, so overlapping crops stay visible
        ax_crop.set_axis_off()
        if crops:
            for k, (a, b) in enumerate(crops):
                ax_crop.barh(k, b - a, left=a - 0.5, height=0.75, color="#2ca02c", alpha=0.85)
                ax_crop.text(a + 0.5, k, f"crop {k}", ha="left", va="center", fontsize=6.5, color="white",
                             fontweight="bold")
            ax_crop.set_ylim(len(crops) - 0.5, -0.5)
        ax.set_xlim(-0.5, max(n_t - 0.5, 0.5))
        cbar = fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
        cbar.set_label("z")
        return _svg(fig)


def coverage_figure(coverage: list[float | None], region_networks: list[str], network_order: list[str],
                    missing: np.ndarray, threshold: float | None) -> str:
    """Fraction of each region's voxels inside the brain mask, regions grouped by network.

    Regions whose series is n/a are marked with a cross below the axis.
    """
    import matplotlib

    with matplotlib.rc_context(_RC):
        n_r = len(coverage)
        rank = {name: i for i, name in enumerate(network_order)}
        order = sorted(range(n_r), key=lambda j: (rank.get(region_networks[j], len(rank)), j))
        colors = network_colors(network_order)
        values = np.array([np.nan if coverage[j] is None else float(coverage[j]) for j in order])
        fig = _figure(10.5, 2.2)
        ax = fig.add_subplot()
        heights = np.nan_to_num(values, nan=0.0)
        nets = [region_networks[j] for j in order]
        for name in network_order:  # one filled step outline per network block (fast, small SVG)
            rows = [i for i, n in enumerate(nets) if n == name]
            if rows:
                a, b = rows[0], rows[-1] + 1
                ax.stairs(heights[a:b], np.arange(a, b + 1) - 0.5, fill=True, color=colors.get(name, "#999999"),
                          lw=0)
        gone = np.flatnonzero(np.asarray(missing, bool)[order]) if n_r else np.array([], int)
        if gone.size:
            ax.scatter(gone, np.full(gone.size, -0.08), marker="x", s=14, color=CENSOR_COLOR, clip_on=False,
                       label=f"n/a in the series ({gone.size})")
        if threshold is not None:
            ax.axhline(threshold, color="k", ls="--", lw=0.8, label=f"--min-coverage {threshold:g}")
        ax.set_ylim(-0.15, 1.05)
        ax.set_xlim(-0.5, max(n_r - 0.5, 0.5))
        ax.set_ylabel("coverage")
        ticks, labels = _network_ticks(nets, network_order)
        ax.set_xticks(ticks, labels, fontsize=7.5)
        ax.tick_params(axis="x", length=0)
        if gone.size or threshold is not None:
            ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=7.5, ncols=2, frameon=False)
        return _svg(fig)


def similarity_figure(features: np.ndarray) -> str:
    """Cosine similarity between the crops' embeddings (crops numbered as in the embedding TSV)."""
    import matplotlib

    with matplotlib.rc_context(_RC):
        norm = np.linalg.norm(features, axis=1, keepdims=True)
        unit = features / np.where(norm > 0, norm, 1.0)
        sim = unit @ unit.T
        n = len(features)
        fig = _figure(2.2 + 0.25 * n, 1.8 + 0.22 * n)
        ax = fig.add_subplot()
        im = ax.imshow(sim, cmap="viridis", vmin=min(0.0, float(sim.min())), vmax=1.0)
        for i in range(n):
            for j in range(n):
                if n <= 8:
                    ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=6.5,
                            color="black" if sim[i, j] > 0.6 else "white")
        ticks = list(range(n))
        ax.set_xticks(ticks, [f"{k}" for k in ticks])
        ax.set_yticks(ticks, [f"{k}" for k in ticks])
        ax.set_ylabel("crop")
        ax.set_xlabel("crop")
        ax.set_title("cosine similarity of crops")
        fig.colorbar(im, ax=ax, fraction=0.05)
        return _svg(fig)


def _network_ticks(nets: list[str], network_order) -> tuple[list[float], list[str]]:
    """Tick positions (middle of each network's rows) and labels, in network order."""
    ticks, labels = [], []
    for name in network_order:
        rows = [i for i, n in enumerate(nets) if n == name]
        if rows:
            ticks.append((rows[0] + rows[-1]) / 2)
            labels.append(name)
    return ticks, labels
