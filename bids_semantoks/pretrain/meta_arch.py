"""Student / teacher meta-architecture and the explicit EMA update.

``student`` and ``teacher`` are :class:`EncoderWithHead`: an
:class:`~bids_semantoks.model.Encoder` followed by one
:class:`~bids_semantoks.model.ProjectionHead` (Linear(D,1024)-GELU-Linear(1024,128)-L2).
The same head projects the [CLS] token, the patch tokens (masked-token loss) and the
per-network token means (TTR loss): the spec names a single projection head, and a
shared head is also DINOv2's default (``ibot.separate_head: false``).

The teacher starts as a copy of the student, never requires a gradient, and changes
only through :func:`ema_update`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EncoderWithHead", "SelfDistillation", "ema_update", "param_groups"]


class EncoderWithHead(nn.Module):
    """Encoder + projection head, one forward for every output the losses need.

    One forward per step keeps DistributedDataParallel simple (one forward, one backward).
    """

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head
        cfg = encoder.config
        self.n_networks = len(cfg.network_names)
        self.n_patches = cfg.n_patches

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, *, tokens: bool = False, ttr: bool = False
    ) -> dict[str, torch.Tensor]:
        """Encode and project.

        Parameters
        ----------
        x : Tensor [n, C, 100]
        mask : Tensor [n, N, P] bool, optional
            Tokens replaced by the mask embedding (student on masked steps).
        tokens : bool
            Also project every patch token (masked-token loss).
        ttr : bool
            Also project the per-network mean of the patch tokens (TTR loss).

        Returns
        -------
        dict
            ``cls_embedding [n, D]`` (encoder output, for monitoring), ``cls [n, p]``,
            and when asked ``tokens [n, N*P, p]``, ``ttr [n, N, p]``.
        """
        out_tokens = self.encoder(x, mask)  # [n, 1 + N*P, D]
        n, _, d = out_tokens.shape
        cls = out_tokens[:, 0]
        patch = out_tokens[:, 1:]
        pieces = [cls]
        if tokens:
            pieces.append(patch.reshape(-1, d))
        if ttr:
            pieces.append(patch.reshape(n, self.n_networks, self.n_patches, d).mean(2).reshape(-1, d))
        projected = self.head(torch.cat(pieces, 0)) if len(pieces) > 1 else self.head(cls)
        result = {"cls_embedding": cls, "cls": projected[:n]}
        offset = n
        if tokens:
            k = patch.shape[1]
            result["tokens"] = projected[offset : offset + n * k].reshape(n, k, -1)
            offset += n * k
        if ttr:
            result["ttr"] = projected[offset:].reshape(n, self.n_networks, -1)
        return result


class SelfDistillation(nn.Module):
    """Holds ``student`` (trained) and ``teacher`` (EMA copy, no gradient)."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.student = EncoderWithHead(encoder, head)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()

    def train(self, mode: bool = True) -> "SelfDistillation":
        super().train(mode)
        self.teacher.eval()
        return self


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """Teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter.

    Buffers (e.g. the tokenizers' kernel norms, fixed after the first forward) are copied
    from the student. Both modules must have the same parameter order (teacher = deepcopy).
    """
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise RuntimeError("teacher and student have different parameters")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)


def param_groups(module: nn.Module) -> list[dict]:
    """AdamW groups: weight decay on weight matrices only.

    No weight decay (DINO/DINOv2 rule) on biases and every 1-D parameter (norms,
    LayerScale), and on parameters named like tokens or embeddings (mask and [CLS]
    tokens, network embedding). The trainer sets ``weight_decay`` of the first group
    from the schedule at every step.
    """
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        lname = name.lower()
        if p.ndim <= 1 or lname.endswith(".bias") or "token" in lname.rsplit(".", 1)[-1] or "embed" in lname:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "apply_weight_decay": True},
        {"params": no_decay, "weight_decay": 0.0, "apply_weight_decay": False},
    ]
