"""The Brain-Semantoks encoder: semantic tokenizer + transformer (MODEL_SPEC section 3)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bids_semantoks.model.config import EncoderConfig
from bids_semantoks.model.layers import Block, init_weights, sincos_positions
from bids_semantoks.model.tokenizer import SemanticTokenizer

__all__ = ["Encoder", "encoder_features"]


class Encoder(nn.Module):
    """Brain-Semantoks encoder.

    Tokens are [CLS] followed by the N*P patch tokens in network-major order
    (net0 p0..p(P-1), net1 p0.., ...). Patch tokens get a learned network embedding
    plus a fixed sine-cosine embedding of the patch index; [CLS] gets none. A masked
    token's tokenizer output is replaced by the learned mask embedding before the
    position embeddings are added. Pre-norm blocks, then a final LayerNorm.

    Parameters
    ----------
    config : EncoderConfig
        Architecture.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        d = config.dim
        self.tokenizer = SemanticTokenizer(config)
        self.network_embed = nn.Parameter(torch.zeros(config.n_networks, d))
        self.register_buffer("time_embed", sincos_positions(config.n_patches, d))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        self.blocks = nn.ModuleList(
            [Block(d, config.heads, config.mlp_hidden, config.layerscale_init, config.norm_eps) for _ in range(config.depth)]
        )
        self.norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.reference = False  # True: use the per-network reference tokenizer (tests, benchmark)
        self._init_weights()

    def _init_weights(self) -> None:
        for p in (self.network_embed, self.cls_token, self.mask_token):
            nn.init.normal_(p, std=0.02)
        for block in self.blocks:
            block.apply(init_weights)

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Tokenizer outputs before masking and positions.

        Parameters
        ----------
        x : Tensor, shape (B, C, P*L), float
            Crops: C channels in atlas order, P*L (100) time steps.

        Returns
        -------
        Tensor, shape (B, N, P, D)
        """
        return self.tokenizer.forward_reference(x) if self.reference else self.tokenizer(x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encode crops.

        Parameters
        ----------
        x : Tensor, shape (B, C, P*L), float
            Crops.
        mask : Tensor, shape (B, N, P), bool, optional
            ``True`` marks tokens replaced by the mask embedding (e.g. networks
            without data).

        Returns
        -------
        Tensor, shape (B, 1 + N*P, D)
            [CLS] then the patch tokens, after the final LayerNorm.
        """
        cfg = self.config
        if x.ndim != 3 or x.shape[1:] != (cfg.n_channels, cfg.n_timepoints):
            raise ValueError(
                f"encoder input must have shape (B, {cfg.n_channels}, {cfg.n_timepoints}); got {tuple(x.shape)}"
            )
        tokens = self.tokenize(x)
        if mask is not None:
            if mask.shape != tokens.shape[:3]:
                raise ValueError(f"mask must have shape {tuple(tokens.shape[:3])}; got {tuple(mask.shape)}")
            tokens = torch.where(mask[..., None].bool(), self.mask_token.to(tokens.dtype), tokens)
        tokens = tokens + self.network_embed[:, None, :] + self.time_embed[None, :, :]
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens.flatten(1, 2)], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    @torch.inference_mode()
    def embed_crops(self, x: np.ndarray, mask: np.ndarray | None = None, batch_size: int = 64) -> np.ndarray:
        """``cls_avg`` features of crops (patch-token mean first, [CLS] second).

        Parameters
        ----------
        x : ndarray, shape (B, C, P*L)
            Crops (converted to float32 on the model's device).
        mask : ndarray of bool, shape (B, N, P), optional
            Masked tokens.
        batch_size : int
            Crops per forward pass.

        Returns
        -------
        ndarray, shape (B, 2*D), float32
        """
        device = next(self.parameters()).device
        out = []
        for lo in range(0, len(x), batch_size):
            xb = torch.as_tensor(np.asarray(x[lo : lo + batch_size], dtype=np.float32), device=device)
            mb = None if mask is None else torch.as_tensor(np.asarray(mask[lo : lo + batch_size], dtype=bool), device=device)
            out.append(encoder_features(self(xb, mb))["cls_avg"].float().cpu().numpy())
        if not out:
            return np.zeros((0, 2 * self.config.dim), dtype=np.float32)
        return np.concatenate(out)


def encoder_features(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Crop-level features from encoder tokens.

    Parameters
    ----------
    tokens : Tensor, shape (B, 1 + N*P, D)
        Encoder output.

    Returns
    -------
    dict
        ``cls`` (B, D): the [CLS] token; ``avg`` (B, D): mean of the patch tokens;
        ``cls_avg`` (B, 2D): ``[avg, cls]``, the patch-token mean FIRST, as the
        authors' ``extract_features(feature_type="cls_avg")``.
    """
    cls = tokens[:, 0]
    avg = tokens[:, 1:].mean(dim=1)
    return {"cls": cls, "avg": avg, "cls_avg": torch.cat([avg, cls], dim=1)}
