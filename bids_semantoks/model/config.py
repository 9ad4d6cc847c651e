"""Encoder configuration (one pydantic model) and the size presets.

The configuration is everything needed to rebuild the architecture; weights live
elsewhere (``model.safetensors``). It is written as ``config.json`` beside them.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["CROP_LENGTH", "EncoderConfig", "model_preset", "PRESETS"]

#: Time steps of one model window (crop): 100 TRs at the target TR (MODEL_SPEC section 4).
CROP_LENGTH = 100

#: Size presets: ``base`` is the released model (MODEL_SPEC section 3).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"dim": 64, "depth": 2, "heads": 2},
    "small": {"dim": 192, "depth": 4, "heads": 3},
    "base": {"dim": 768, "depth": 8, "heads": 12},
}


class EncoderConfig(BaseModel):
    """Architecture of a Brain-Semantoks encoder.

    Attributes
    ----------
    network_names : list of str
        Network ("semantic token") names, in token order.
    channel_networks : list of int
        Network id (index into ``network_names``) of every input channel, length C.
    dim : int
        Token width D (even; split D/2 dense + D/2 long-convolution tokenizer branches).
    depth : int
        Number of transformer blocks.
    heads : int
        Attention heads (``dim`` must be divisible by it).
    mlp_ratio : float
        MLP hidden width / D.
    patch_len, n_patches : int
        Time steps per patch and patches per crop; their product must be 100, the model
        window every level uses (100 TRs at the target TR, MODEL_SPEC section 4).
    dense_kernel : int
        Kernel of the dense Conv1d tokenizer branch (odd, "same" zero padding).
    sl_piece_len, sl_n_pieces : int
        Long-convolution kernel pieces: ``sl_n_pieces`` learned pieces of length
        ``sl_piece_len``, piece i upsampled by ``2**max(0, i - 1)``.
    sl_decay : float
        Multiplier base: piece i is scaled by ``sl_decay ** (sl_n_pieces - 1 - i)``.
    layerscale_init : float
        Initial LayerScale gamma (only used to initialise new models).
    norm_eps : float
        LayerNorm epsilon everywhere.
    name : str
        Free label of the model (preset name or user name).
    """

    model_config = ConfigDict(extra="forbid")

    network_names: list[str] = Field(min_length=1)
    channel_networks: list[int] = Field(min_length=1)
    dim: int = Field(gt=0)
    depth: int = Field(ge=0)
    heads: int = Field(gt=0)
    mlp_ratio: float = Field(default=4.0, gt=0)
    patch_len: int = Field(default=20, gt=0)
    n_patches: int = Field(default=5, gt=0)
    dense_kernel: int = Field(default=3, gt=0)
    sl_piece_len: int = Field(default=4, gt=0)
    sl_n_pieces: int = Field(default=3, gt=0)
    sl_decay: float = 2.0
    layerscale_init: float = 0.1
    norm_eps: float = 1e-5
    name: str = "custom"

    @model_validator(mode="after")
    def _check(self) -> "EncoderConfig":
        n_net = len(self.network_names)
        if self.dim % 2 or self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ValueError(f"dim={self.dim} must be even and divisible by heads={self.heads}")
        if self.patch_len * self.n_patches != CROP_LENGTH:
            raise ValueError(
                f"patch_len x n_patches = {self.patch_len} x {self.n_patches} = {self.patch_len * self.n_patches}, "
                f"but the model window is {CROP_LENGTH} time steps (20 x 5 in the released model)"
            )
        if self.dense_kernel % 2 == 0:
            raise ValueError(f"dense_kernel={self.dense_kernel} must be odd")
        bad = sorted({c for c in self.channel_networks if not 0 <= c < n_net})
        if bad:
            raise ValueError(f"channel_networks holds ids {bad} outside 0..{n_net - 1}")
        empty = [self.network_names[n] for n in range(n_net) if n not in set(self.channel_networks)]
        if empty:
            raise ValueError(f"networks {empty} have no channel in channel_networks")
        return self

    # Derived sizes -------------------------------------------------------------------
    @property
    def n_channels(self) -> int:
        return len(self.channel_networks)

    @property
    def n_networks(self) -> int:
        return len(self.network_names)

    @property
    def n_timepoints(self) -> int:
        """Crop length in time steps (100 for the released model)."""
        return self.patch_len * self.n_patches

    @property
    def network_sizes(self) -> list[int]:
        """Channels per network (R_n), in token order."""
        return [self.channel_networks.count(n) for n in range(self.n_networks)]

    @property
    def branch_dim(self) -> int:
        """Output channels of each tokenizer branch (D/2)."""
        return self.dim // 2

    def sl_kernels(self, n_regions: int) -> int:
        """Long-convolution kernels per region, H_n = ceil((D/2) / R_n)."""
        return math.ceil(self.branch_dim / n_regions)

    @property
    def sl_kernel_len(self) -> int:
        """Length of the assembled long-convolution kernel (16 for 3 pieces of 4)."""
        return sum(self.sl_piece_len * 2 ** max(0, i - 1) for i in range(self.sl_n_pieces))

    @property
    def mlp_hidden(self) -> int:
        return int(round(self.dim * self.mlp_ratio))


def model_preset(
    size: Literal["tiny", "small", "base"], network_names: list[str], channel_networks: list[int]
) -> EncoderConfig:
    """Configuration of a preset size for a given atlas grouping.

    Parameters
    ----------
    size : {"tiny", "small", "base"}
        ``base`` is the released size (D=768, 8 blocks, 12 heads, MLP 3072); ``small`` is
        D=192, 4 blocks; ``tiny`` (D=64, 2 blocks) is for tests and demos.
    network_names : list of str
        Network names in token order.
    channel_networks : list of int
        Network id of every channel.

    Returns
    -------
    EncoderConfig

    Examples
    --------
    >>> cfg = model_preset("tiny", ["a", "b"], [0, 0, 1])
    >>> cfg.dim, cfg.network_sizes
    (64, [2, 1])
    """
    if size not in PRESETS:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(PRESETS)}")
    return EncoderConfig(
        network_names=list(network_names),
        channel_networks=[int(c) for c in channel_networks],
        name=size,
        **PRESETS[size],
    )
