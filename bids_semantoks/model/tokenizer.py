"""Semantic tokenizer: one small convolutional tokenizer per network (MODEL_SPEC section 2).

Network n (R_n channels) maps each 20-step patch to one D-dim token with two parallel
branches, concatenated, then GELU, mean over time and LayerNorm:

- dense: ``Conv1d(R_n, D/2, kernel 3, zero "same" padding)``;
- long convolution: depthwise over the regions with H_n = ceil((D/2)/R_n) kernels
  per region, plus a learned skip term, then ``Linear(H_n*R_n, D/2)``.

The long kernel (H_n, R_n, 16) is assembled from three learned pieces of length 4:
piece i is upsampled by ``2**max(0, i-1)`` (repetition) and scaled by
``multiplier**(2-i)`` (multiplier buffer = 2.0), so the scales are 4, 2 and 1. The
kernel is divided by ``kernel_norm``, the L2 norm over time of the assembled kernel,
computed once (when the model is built, or from the loaded kernels if a checkpoint
says it was never computed) and then kept as a buffer. The convolution is a true
convolution (flipped kernel) with zero padding 7 left / 8 right, which keeps 20
steps. The depthwise output channel of (region r, kernel h) is ``r*H_n + h``. These
choices reproduce the authors' tokenizer bit for bit (``tokenizer_out`` of the parity
fixture, max abs diff 0.0 with the per-network reference).

Two implementations share the parameters:

- :meth:`NetworkTokenizer.forward`: a literal, per-network transcription of the above
  (the oracle in the tests and the baseline of ``benchmarks/encoder_speed.py``);
- :meth:`SemanticTokenizer.forward`: the default path, written for GEMMs. The depthwise
  long convolution is the costly part of a literal transcription on CPU (~5 GFLOP/s: it
  is memory-bound). Here it is one batched matrix product per network: each region's
  H kernels become a banded (Toeplitz) matrix of shape (20 + 15, 20 * H), so
  ``y[r] = pad(x)[r] @ T[r]`` for all patches at once; the result is laid out
  channels-last (patch-step rows, ``r*H + h`` columns) so the projection is a single
  GEMM instead of one small product per patch. In CPU inference the dense branch is a
  GEMM too, over the unfolded 3-step windows ((patch-step, k*R) @ (k*R, D/2); oneDNN's
  convolution ran at ~110 GFLOP/s, up to 5x slower than the GEMM for small R_n), and the
  GELU of both branches is fused into their GEMMs (:func:`bids_semantoks.model.layers.linear`);
  training and GPUs keep the convolution (the unfolded copy would be kept for backward);
  the time mean runs per network while its output is still in cache, the LayerNorm once
  for all networks.
  Measured in ``benchmarks/encoder_speed.py``. Batching across networks (grouped conv
  with networks padded to the largest R_n, or padded ``bmm``) was measured 1.5-1.8x
  slower on CPU at D=768 (R_n ranges 7..91, so padding nearly doubles the work) and is
  not used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bids_semantoks.model.config import EncoderConfig
from bids_semantoks.model.layers import linear, onednn_applies

__all__ = ["LongConv", "NetworkTokenizer", "SemanticTokenizer"]


class LongConv(nn.Module):
    """Structured long convolution, depthwise with ``n_kernels`` kernels per region.

    Parameters
    ----------
    n_regions : int
        Input channels R.
    n_kernels : int
        Kernels per channel H.
    piece_len, n_pieces : int
        Learned pieces of the kernel.
    decay : float
        Value of the ``multiplier`` buffer.
    """

    def __init__(self, n_regions: int, n_kernels: int, piece_len: int = 4, n_pieces: int = 3, decay: float = 2.0):
        super().__init__()
        self.n_regions, self.n_kernels = n_regions, n_kernels
        self.pieces = nn.ParameterList(
            [nn.Parameter(torch.randn(n_kernels, n_regions, piece_len)) for _ in range(n_pieces)]
        )
        self.skip = nn.Parameter(torch.randn(n_kernels, n_regions))
        self.register_buffer("multiplier", torch.full((1, n_regions, 1), float(decay)))
        self.register_buffer("kernel_norm", torch.ones(n_kernels, n_regions, 1))
        self.register_buffer("kernel_norm_initialized", torch.tensor(False))
        self.init_kernel_norm()

    @property
    def kernel_len(self) -> int:
        return sum(p.shape[-1] * 2 ** max(0, i - 1) for i, p in enumerate(self.pieces))

    @property
    def padding(self) -> tuple[int, int]:
        """Zero padding (left, right) that keeps the length: (7, 8) for a 16-step kernel."""
        total = self.kernel_len - 1
        return total // 2, total - total // 2

    def raw_kernel(self) -> torch.Tensor:
        """Assembled kernel before normalisation, shape (H, R, kernel_len)."""
        n = len(self.pieces)
        parts = [
            F.interpolate(p, scale_factor=2 ** max(0, i - 1), mode="nearest") * self.multiplier ** (n - 1 - i)
            if i > 1
            else p * self.multiplier ** (n - 1 - i)
            for i, p in enumerate(self.pieces)
        ]
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def init_kernel_norm(self) -> None:
        """Compute ``kernel_norm`` from the current kernels and mark it as computed."""
        self.kernel_norm.copy_(self.raw_kernel().norm(dim=-1, keepdim=True))
        self.kernel_norm_initialized.fill_(True)

    def conv_weight(self, fold_skip: bool = False) -> torch.Tensor:
        """Depthwise ``conv1d`` weight (R*H, 1, L), channel ``r*H + h``, kernel flipped.

        With ``fold_skip`` the skip term is added at the tap that reads the current step.
        """
        k = (self.raw_kernel() / self.kernel_norm).flip(-1)
        if fold_skip:
            tap = F.one_hot(torch.tensor(self.padding[0]), k.shape[-1]).to(k)
            k = k + self.skip[..., None] * tap
        return k.transpose(0, 1).reshape(-1, 1, k.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(M, R, T) -> (M, R*H, T), channel ``r*H + h``."""
        m, r, t = x.shape
        y = F.conv1d(F.pad(x, self.padding), self.conv_weight(), groups=r).reshape(m, r, self.n_kernels, t)
        y = y + x[:, :, None, :] * self.skip.T[None, :, :, None]
        return y.reshape(m, r * self.n_kernels, t)


class NetworkTokenizer(nn.Module):
    """Tokenizer of one network: patches (M, R, patch_len) -> tokens (M, D)."""

    def __init__(self, n_regions: int, config: EncoderConfig):
        super().__init__()
        half = config.branch_dim
        n_kernels = config.sl_kernels(n_regions)
        self.dense = nn.Conv1d(n_regions, half, config.dense_kernel, padding=config.dense_kernel // 2)
        self.long = LongConv(n_regions, n_kernels, config.sl_piece_len, config.sl_n_pieces, config.sl_decay)
        self.proj = nn.Linear(n_kernels * n_regions, half)
        self.norm = nn.LayerNorm(config.dim, eps=config.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.dense(x)
        b = self.proj(self.long(x).transpose(1, 2)).transpose(1, 2)
        return self.norm(F.gelu(torch.cat([a, b], dim=1)).mean(dim=-1))


class SemanticTokenizer(nn.Module):
    """All network tokenizers: crops (B, C, P*L) -> tokens (B, N, P, D)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.dim, self.n_patches, self.patch_len = config.dim, config.n_patches, config.patch_len
        self.eps = config.norm_eps
        self.sizes = config.network_sizes
        self.nets = nn.ModuleList([NetworkTokenizer(r, config) for r in self.sizes])
        order = sorted(range(config.n_channels), key=lambda c: config.channel_networks[c])
        self._identity = order == list(range(config.n_channels))
        self.register_buffer("order", torch.tensor(order, dtype=torch.long), persistent=False)

    def patches(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Crops (B, C, P*L) -> per-network patches (B*P, R_n, L), channels in input order."""
        b, c, _ = x.shape
        if not self._identity:
            x = x.index_select(1, self.order)
        x = x.reshape(b, c, self.n_patches, self.patch_len).transpose(1, 2).reshape(b * self.n_patches, c, -1)
        return list(x.split(self.sizes, dim=1))

    def _tokens(self, z: torch.Tensor, batch: int) -> torch.Tensor:
        return z.reshape(batch, self.n_patches, len(self.sizes), self.dim).transpose(1, 2)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Straightforward per-network loop (oracle and benchmark baseline)."""
        z = torch.stack([net(p) for net, p in zip(self.nets, self.patches(x))], dim=1)
        return self._tokens(z, x.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        toks = []
        for net, p in zip(self.nets, self.patches(x)):
            m, r, t = p.shape
            if onednn_applies(p, net.dense.weight):
                # CPU inference: dense branch as one GEMM over the unfolded windows,
                # (M*T, k*R) @ (k*R, D/2) with column j*R + r, GELU fused
                k = net.dense.kernel_size[0]
                win = F.pad(p, (k // 2, k // 2)).unfold(2, k, 1).permute(0, 2, 3, 1).reshape(m * t, k * r)
                w_dense = net.dense.weight.permute(0, 2, 1).reshape(half, k * r)
                a = linear(win, w_dense, net.dense.bias, "gelu").reshape(m, t, half)
            else:  # training / GPU: the convolution (no unfolded copy kept for backward)
                a = F.gelu(F.conv1d(p, net.dense.weight, net.dense.bias, padding=net.dense.padding)).transpose(1, 2)
            # long convolution as one bmm over regions: (R, M, T+15) @ (R, T+15, T*H)
            y = torch.bmm(F.pad(p, net.long.padding).transpose(0, 1), _toeplitz(net.long, t))
            y = y.reshape(r, m, t, net.long.n_kernels).permute(1, 2, 0, 3).reshape(m * t, -1)
            b = linear(y, net.proj.weight, net.proj.bias, "gelu").reshape(m, t, half)
            toks.append(torch.cat([a.mean(dim=1), b.mean(dim=1)], dim=1))
        z = torch.stack(toks, dim=1)  # (B*P, N, D)
        weight = torch.stack([net.norm.weight for net in self.nets])
        bias = torch.stack([net.norm.bias for net in self.nets])
        z = F.layer_norm(z, (self.dim,), eps=self.eps) * weight + bias
        return self._tokens(z, x.shape[0])


def _toeplitz(long: LongConv, steps: int) -> torch.Tensor:
    """Banded matrices of the long convolution, shape (R, steps + L - 1, steps * H).

    ``T[r, s, t*H + h] = w[r, h, s - t]`` (zero outside ``0 <= s - t < L``) with ``w`` the
    cross-correlation weights of :meth:`LongConv.conv_weight` (skip term folded in), so
    that ``F.pad(x)[:, r] @ T[r]`` equals the depthwise ``conv1d`` output of region r.
    Built by one differentiable gather (training uses this path too).
    """
    r, h, length = long.n_regions, long.n_kernels, long.kernel_len
    w = F.pad(long.conv_weight(fold_skip=True).reshape(r, h, length), (0, 1))  # index L = 0
    lag = torch.arange(steps + length - 1, device=w.device)[:, None] - torch.arange(steps, device=w.device)
    lag = torch.where((lag >= 0) & (lag < length), lag, length)  # (S, T)
    return w[:, :, lag].permute(0, 2, 3, 1).reshape(r, steps + length - 1, steps * h)
