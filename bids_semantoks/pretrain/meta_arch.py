"""Student / teacher meta-architecture and the explicit EMA update.

``student`` and ``teacher`` are :class:`EncoderWithHead`: an
:class:`~bids_semantoks.model.Encoder` followed by one
:class:`~bids_semantoks.model.ProjectionHead` (Linear(D,1024)-GELU-Linear(1024,128)-L2).
The same head projects the [CLS] token, the patch tokens (masked-token loss) and the
per-network token means (TTR loss): the spec names a single projection head, and a
shared head is also DINOv2's default (``ibot.separate_head: false``).

The teacher starts as a copy of the student, never requires a gradient, and changes
only through :func:`ema_update` (:meth:`SelfDistillation.update_teacher`).

As in DINOv2's ``SSLMetaArch``, one call computes every loss of a step and its gradient
(:meth:`SelfDistillation.forward_backward`, returning the loss terms); the training loop
only samples the batch, steps the optimiser and the schedules, and logs.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, nullcontext
from typing import Callable

import torch
from torch import nn

from bids_semantoks.pretrain.losses import coding_rate_loss, masked_token_loss, ttr_loss

__all__ = ["EncoderWithHead", "SelfDistillation", "ema_update", "param_groups", "LOSS_TERMS"]

#: Keys of the loss dict of :meth:`SelfDistillation.forward_backward`, in log order.
LOSS_TERMS = ("loss", "loss_cls", "cls_alignment", "cls_rate", "loss_tok", "loss_ttr", "ttr_alignment", "ttr_rate")


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
    """Holds ``student`` (trained) and ``teacher`` (EMA copy, no gradient).

    Parameters
    ----------
    encoder, head : nn.Module
        The student's encoder and projection head; the teacher is a deep copy.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.student = EncoderWithHead(encoder, head)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()
        # the student as called in forward (a DistributedDataParallel wrapper once distributed);
        # kept out of the submodules so the state dict keys do not change
        self.__dict__["_student_call"] = self.student

    def train(self, mode: bool = True) -> "SelfDistillation":
        super().train(mode)
        self.__dict__["_student_call"].train(mode)
        self.teacher.eval()
        return self

    def prepare_for_distributed_training(self, device: torch.device) -> None:
        """Wrap the student in DistributedDataParallel (the process group must exist).

        ``find_unused_parameters=True``: the mask embedding gets no gradient on unmasked steps.
        """
        from torch.nn.parallel import DistributedDataParallel

        self.__dict__["_student_call"] = DistributedDataParallel(
            self.student, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )

    def forward_backward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        *,
        n_views: int,
        ttr_weight: float,
        coding_rate_eps: float,
        tok_loss_weight: float,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
        autocast: AbstractContextManager | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Forward student and teacher on one step's views, sum the losses, backpropagate.

        ``loss = L_cls + tok_loss_weight * L_tok (masked steps) + ttr_weight * L_ttr (ttr_weight > 0)``

        Parameters
        ----------
        x : Tensor [n_views * m, C, 100]
            The augmented views of this process's ``m`` subjects, view-major.
        mask : Tensor [n_views * m, N, P] bool or None
            Masked tokens of the student on a masked step; ``None`` on the other steps.
        n_views : int
        ttr_weight : float
            Weight of the TTR loss on this step (0: not computed).
        coding_rate_eps : float
        tok_loss_weight : float
        gather : callable, optional
            Global-batch gather for the coding rates (``losses.all_gather_with_grad`` under DDP).
        autocast : context manager, optional
            Mixed precision of the two forwards (the losses run outside it).

        Returns
        -------
        losses : dict of str to Tensor
            The scalar terms named in :data:`LOSS_TERMS`, detached except ``loss``; NaN for
            terms not computed on this step.
        teacher_out : dict of str to Tensor
            The teacher's outputs (the collapse watch reads ``cls_embedding`` and ``cls``).
        """
        masked = mask is not None
        ttr = ttr_weight > 0
        with autocast if autocast is not None else nullcontext():
            s_out = self.__dict__["_student_call"](x, mask, tokens=masked, ttr=ttr)
            with torch.no_grad():
                t_out = self.teacher(x, None, tokens=masked, ttr=ttr)

        losses = self.__dict__.get("_compiled_losses", self._losses)
        weight = torch.full((), ttr_weight, device=x.device) if "_compiled_losses" in self.__dict__ else ttr_weight
        values = losses(s_out, t_out, mask, weight, ttr, n_views, coding_rate_eps, tok_loss_weight, gather)
        loss = values[0]
        loss.backward()
        return {k: v if k == "loss" else v.detach() for k, v in zip(LOSS_TERMS, values)}, t_out

    def _losses(self, s_out, t_out, mask, ttr_weight, ttr: bool, n_views: int, coding_rate_eps: float,
                tok_loss_weight: float, gather):
        """The loss terms of one step, in :data:`LOSS_TERMS` order (NaN where not computed)."""
        cls = s_out["cls"]
        local = cls.shape[0] // n_views
        n_networks, n_tokens = self.student.n_networks, self.student.n_networks * self.student.n_patches
        p = cls.shape[-1]
        nan = torch.full((), float("nan"), device=cls.device)  # placeholder of terms not computed
        l_cls, cls_align, cls_rate = coding_rate_loss(
            cls.view(n_views, local, p), t_out["cls"].view(n_views, local, p), coding_rate_eps, gather
        )
        loss = l_cls
        l_tok = l_ttr = ttr_align = ttr_rate = nan
        if mask is not None:
            l_tok = masked_token_loss(s_out["tokens"], t_out["tokens"], mask.view(-1, n_tokens))
            loss = loss + tok_loss_weight * l_tok
        if ttr:
            l_ttr, ttr_align, ttr_rate = ttr_loss(
                s_out["ttr"].view(n_views, local, n_networks, p),
                t_out["ttr"].view(n_views, local, n_networks, p),
                coding_rate_eps, gather,
            )
            loss = loss + ttr_weight * l_ttr
        return loss, l_cls, cls_align, cls_rate, l_tok, l_ttr, ttr_align, ttr_rate

    def compile_step(self, backend: str = "inductor") -> None:
        """``torch.compile`` the loss assembly too (``compile: step``, CUDA only).

        The encoders are compiled separately (``compile_encoders``). The TTR weight is then
        passed as a 0-d tensor so that its per-step value does not trigger a recompilation;
        the numbers differ from eager only by the fused kernels' rounding. The EMA stays
        the foreach kernels (its momentum changes every step; ``pretrain_throughput.py``
        times it).
        """
        self.__dict__["_compiled_losses"] = torch.compile(self._losses, backend=backend)

    def update_teacher(self, momentum: float, *, foreach: bool = True) -> None:
        """EMA step of the teacher towards the student (:func:`ema_update`)."""
        ema_update(self.teacher, self.student, momentum, foreach=foreach)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float, *, foreach: bool = True) -> None:
    """Teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter.

    Buffers (e.g. the tokenizers' kernel norms, fixed after the first forward) are copied
    from the student. Both modules must have the same parameter order (teacher = deepcopy).

    Parameters
    ----------
    teacher, student : nn.Module
    momentum : float
    foreach : bool
        ``True`` (default): two multi-tensor kernels (``torch._foreach_mul_`` /
        ``_foreach_add_``) for all parameters, a few launches on a GPU instead of two per
        parameter. ``False``: the plain per-parameter loop. Both give identical numbers
        (same two roundings per element; tested).
    """
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise RuntimeError("teacher and student have different parameters")
    if foreach:
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
    else:
        for t, s in zip(t_params, s_params):
            t.mul_(momentum).add_(s, alpha=1.0 - momentum)
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
