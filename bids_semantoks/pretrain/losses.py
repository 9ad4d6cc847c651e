"""Self-distillation losses (one function per loss, its formula in the docstring).

Conventions: projections are L2-normalised, so a cosine is a dot product. ``V`` views,
``m`` samples per view, ``p`` projection width. The teacher side is always detached.
No softmax prototypes, temperatures or centering (SimDINO-style, MODEL_SPEC section 5).

Distributed training: the coding rate needs the *global* batch. Pass
``gather=all_gather_with_grad`` (see :func:`all_gather_with_grad`); it concatenates the
samples of every process and sends the gradient of each slice back to its owner, so that
with DistributedDataParallel's gradient averaging the result equals one process holding
the whole batch. Mean-over-samples terms are computed locally (DDP averages them).
All losses are computed in float32, also under bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

__all__ = [
    "coding_rate",
    "coding_rate_loss",
    "rate_balance",
    "masked_token_loss",
    "ttr_loss",
    "all_gather_with_grad",
]

Gather = Callable[[torch.Tensor], torch.Tensor]


def _identity(z: torch.Tensor) -> torch.Tensor:
    return z


def coding_rate(z: torch.Tensor, eps: float = 0.05, gather: Gather | None = None) -> torch.Tensor:
    r"""Coding rate of a set of ``m`` vectors of width ``p``.

    .. math:: R(Z) = \tfrac12 \log\det\left(I_p + \frac{p}{m\,\varepsilon} Z^\top Z\right),
              \quad Z \in \mathbb{R}^{m \times p}

    Parameters
    ----------
    z : Tensor [m, p]
        Local rows; with ``gather`` the rows of all processes are used (``m`` = global count).
    eps : float
        Distortion epsilon (0.05 in the paper).
    gather : callable, optional
        Maps the local rows to the global rows (identity by default).
    """
    z = (gather or _identity)(z.float())
    m, p = z.shape
    gram = z.T @ z  # [p, p]
    eye = torch.eye(p, device=z.device, dtype=z.dtype)
    return 0.5 * torch.logdet(eye + (p / (m * eps)) * gram)


def coding_rate_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    eps: float = 0.05,
    gather: Gather | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""SimDINO-style loss: cross-view alignment minus the balanced coding rate.

    .. math::
        L = -\frac{1}{V(V-1)} \sum_{v \ne w} \frac{1}{m} \sum_i \langle s_{v,i}, t_{w,i} \rangle
            \;-\; \gamma \, \frac{1}{V} \sum_v R\!\left(\tfrac12 (S_v + T_v)\right),
        \qquad \gamma = \frac{p + m}{p\,m}

    with :func:`coding_rate` ``R`` (same-view pairs ``v = w`` excluded from the alignment;
    ``m`` = global batch in ``R`` and ``gamma``). ``gamma`` is SimDINO's balancing factor
    (the "scaling as in SimDINO" of MODEL_SPEC section 5): ``R`` grows like
    ``min(m, p)/2 * log(...)`` (45-110 at batch 64), the alignment is at most 1, and
    without ``gamma`` the rate term drowns the alignment (measured on ABIDE: cross-view
    cosine fell to 0.1 and nothing view-invariant was learned).

    Parameters
    ----------
    student, teacher : Tensor [V, m, p]
        L2-normalised projections of each view (teacher is detached here).
    eps : float
        Coding-rate epsilon.
    gather : callable, optional
        Global gather for the coding rate (distributed training).

    Returns
    -------
    total, alignment, rate : Tensor (scalars)
        ``total = -alignment - rate``; ``rate`` includes ``gamma``.
    """
    student = student.float()
    teacher = teacher.detach().float()
    n_views = student.shape[0]
    sims = torch.einsum("vmp,wmp->vw", student, teacher) / student.shape[1]  # [V, V] mean cosines
    off_diag = ~torch.eye(n_views, dtype=torch.bool, device=sims.device)
    alignment = sims[off_diag].mean()
    rate = torch.stack([coding_rate(0.5 * (student[v] + teacher[v]), eps, gather) for v in range(n_views)]).mean()
    world = dist.get_world_size() if gather is not None and dist.is_available() and dist.is_initialized() else 1
    rate = rate * rate_balance(student.shape[1] * world, student.shape[2])
    return -alignment - rate, alignment, rate


def rate_balance(m: int, p: int) -> float:
    """SimDINO's balancing factor ``gamma = (p + m) / (p m)`` of the coding-rate term."""
    return (p + m) / (p * m)


def masked_token_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Masked-token loss: student vs teacher projected patch token at the same position.

    .. math::
        L_{tok} = -\frac{1}{n} \sum_{j=1}^{n} \frac{1}{|M_j|} \sum_{k \in M_j}
                  \langle s_{j,k}, t_{j,k} \rangle

    over the ``n = V * B`` (view, sample) pairs, ``M_j`` the masked tokens of pair ``j``
    (the student saw the masked view, the teacher the full one). Pairs without masked
    tokens add 0 (and still count in ``n``: "summed, divided by 2B").

    Parameters
    ----------
    student, teacher : Tensor [n, K, p]
        L2-normalised projections of the ``K = N * P`` patch tokens.
    mask : Tensor [n, K] bool
        True where the student's token was masked.
    """
    mask = mask.float()
    cos = (student.float() * teacher.detach().float()).sum(-1)  # [n, K]
    per_pair = (cos * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
    return -per_pair.sum() / student.shape[0]


def ttr_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    eps: float = 0.05,
    gather: Gather | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Temporal regularisation ("TTR"): the coding-rate loss on network-level tokens.

    Each network's patch tokens are averaged over the ``P`` patches of a view (before the
    projection head), projected, and the views are compared with :func:`coding_rate_loss`
    over the ``m = B * N`` (sample, network) rows:

    .. math:: L_{ttr} = L_{cr}\big(\{\bar s_{v,(b,n)}\}, \{\bar t_{v,(b,n)}\}\big)

    Parameters
    ----------
    student, teacher : Tensor [V, B, N, p]
        Projections of the per-network patch-token means.
    """
    v, b, n, p = student.shape
    return coding_rate_loss(student.reshape(v, b * n, p), teacher.reshape(v, b * n, p), eps, gather)


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradient of every process for each slice.

    Written with all_reduce only, so it works on every backend (gloo has no reduce_scatter).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D401
        world = dist.get_world_size()
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x [m_local, ...]`` of all processes (equal sizes) along dim 0, with gradient.

    Every process computes the same global quantity; the backward pass sums each slice's
    gradient over processes, and DDP's gradient average then gives exactly the gradient of
    that quantity, as with one process holding every row. Identity when not distributed.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _AllGatherWithGrad.apply(x)
