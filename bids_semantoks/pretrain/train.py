"""The training loop: steps, checkpoints, resume, logging, DistributedDataParallel.

One step (global batch ``B`` split evenly over ``W`` processes)::

    subjects  <- rows of this epoch's seeded permutation of the subjects (drop_last)
    views     <- 2 crops per subject, augmented          (augment.py, on the device)
    masks     <- on a seeded half of the steps              (augment.py)
    student   <- masked views  -> [CLS], patch tokens, network means, projected
    teacher   <- full views    -> the same, no gradient
    loss      =  L_cls + w_ttr(t) * L_ttr + 0.5 * L_tok     (losses.py)
    AdamW step with LR / weight decay from the schedules, gradient-norm clip 1.0
    teacher   <- EMA of the student with the scheduled momentum   (meta_arch.ema_update)

Reproducibility: the random numbers of step ``s`` come from generators seeded with
``(seed, s)`` and the subject order of epoch ``e`` from ``(seed, e)``, so a resumed run
makes the same draws as an uninterrupted one (bitwise identical weights on CPU), and
``W`` processes make the same draws as one (they draw for the global batch and keep
their rows). Distributed: the student is wrapped in DistributedDataParallel
(``find_unused_parameters=True``: the mask embedding is unused on unmasked steps) and
the coding rates use the global batch (``losses.all_gather_with_grad``).

Layout (after DINOv2's ``train/train.py`` + ``ssl_meta_arch.py``): the set-up is one
function each (:func:`plan_steps`, :func:`compile_encoders`, :func:`build_optimizer`,
:func:`prepare_run`); the losses and their gradient are
:meth:`~bids_semantoks.pretrain.meta_arch.SelfDistillation.forward_backward`, the EMA
:meth:`~bids_semantoks.pretrain.meta_arch.SelfDistillation.update_teacher`; :func:`train`
only iterates, steps the schedules, logs (:class:`~bids_semantoks.pretrain.monitor.StepLog`)
and checkpoints at the end of an epoch (:func:`end_epoch`).
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bids_semantoks.errors import UsageError
from bids_semantoks.pretrain import monitor
from bids_semantoks.pretrain.augment import augment_views, sample_masks, sample_views
from bids_semantoks.pretrain.checkpoint import STATE_NAME, resume_training, save_training_state
from bids_semantoks.pretrain.data import PretrainData
from bids_semantoks.pretrain.distributed import DistInfo, all_mean, barrier
from bids_semantoks.pretrain.losses import all_gather_with_grad
from bids_semantoks.pretrain.meta_arch import SelfDistillation, param_groups
from bids_semantoks.pretrain.options import PretrainOptions
from bids_semantoks.pretrain.schedules import Schedules

__all__ = [
    "train", "step_generator", "epoch_order", "StepPlan", "plan_steps", "compile_encoders", "build_optimizer",
    "prepare_run", "sample_batch", "apply_schedules", "clip_gradients", "end_epoch",
]

logger = logging.getLogger(__name__)

CROP_LEN = 100


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """Generator of step ``step``: the same numbers on every process and after a resume."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step * 7_919 + 12_345) % (2**63 - 1))
    return g


def epoch_order(seed: int, epoch: int, n_subjects: int) -> np.ndarray:
    """Seeded permutation of the subjects for epoch ``epoch``."""
    return np.random.default_rng([seed, epoch, 17]).permutation(n_subjects)


def _masked_step(seed: int, step: int, prob: float) -> bool:
    return bool(np.random.default_rng([seed, step, 1]).random() < prob)


def _fingerprint(options: PretrainOptions, data: PretrainData, steps_per_epoch: int) -> dict[str, Any]:
    """What must not change between an interrupted run and its resume."""
    keep = options.model_dump(mode="json")
    for key in ("resume", "device", "progress", "log_every", "checkpoint_every", "compile"):
        keep.pop(key, None)
    return {"options": keep, "subjects": data.subjects, "steps_per_epoch": steps_per_epoch}


def _autocast(options: PretrainOptions, device: torch.device):
    use_bf16 = options.mixed_precision == "bf16" or (options.mixed_precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


# --- set-up --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepPlan:
    """How the global batch is cut: steps per epoch, this process's rows of each batch."""

    batch: int
    steps_per_epoch: int
    local: int
    rows: slice


def plan_steps(options: PretrainOptions, n_subjects: int, info: DistInfo) -> StepPlan:
    """Check the batch against the processes and the subjects (drop_last); raise UsageError if unusable."""
    batch = options.batch_size
    if batch % info.world_size:
        raise UsageError(f"--batch-size {batch} is not divisible by the {info.world_size} processes; change either")
    steps_per_epoch = n_subjects // batch
    if steps_per_epoch == 0:
        raise UsageError(
            f"--batch-size {batch} exceeds the {n_subjects} selected subjects (drop_last leaves no step); "
            "lower --batch-size or raise --train-fraction"
        )
    local = batch // info.world_size
    return StepPlan(batch, steps_per_epoch, local, slice(info.rank * local, (info.rank + 1) * local))


def compile_encoders(model: SelfDistillation, options: PretrainOptions, device: torch.device) -> bool:
    """``torch.compile`` the student and teacher encoders when ``options.compile`` asks (auto: on CUDA).

    ``"step"`` (CUDA only; on CPU the step stays eager, with the plain path's numbers)
    also compiles the loss assembly and the EMA update (:meth:`SelfDistillation.compile_step`).
    Returns whether anything was compiled. Under ``auto``/``step`` a missing compiler
    toolchain falls back to eager (costs speed, not the run).
    """
    mode = options.compile
    cuda = device.type == "cuda"
    if not (mode is True or (mode in ("auto", "step") and cuda)):
        return False
    if mode in ("auto", "step"):
        import torch._dynamo as dynamo

        dynamo.config.suppress_errors = True
    model.student.encoder.compile()
    model.teacher.encoder.compile()
    if mode == "step":
        model.compile_step()
    return True


def build_optimizer(model: SelfDistillation, options: PretrainOptions, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the student's parameter groups (:func:`~.meta_arch.param_groups`).

    LR and weight decay start at 0 and are set from the schedules at every step. Fused
    kernel on CUDA (one launch for all parameters); the default foreach path on CPU.
    """
    return torch.optim.AdamW(param_groups(model.student), lr=0.0, betas=tuple(options.adam_betas), weight_decay=0.0,
                             fused=True if device.type == "cuda" else None)


def prepare_run(
    model: SelfDistillation, optimizer: torch.optim.Optimizer, options: PretrainOptions, folder: Path,
    info: DistInfo, fingerprint: dict[str, Any], steps_per_epoch: int,
) -> int:
    """Resume if asked and possible, then set up ``training/`` (options, logs); return the first epoch.

    On the main process: removes temporary files of a killed run, writes ``options.yaml``
    and the log headers (keeping the rows before the checkpoint on a resume).
    """
    training_dir = folder / "training"
    state_path = folder / STATE_NAME
    start_epoch = 0
    if options.resume and state_path.is_file():
        start_epoch = resume_training(state_path, model=model, optimizer=optimizer, fingerprint=fingerprint)
        logger.info("resuming %s at epoch %d of %d", folder.name, start_epoch, options.epochs)
    elif options.resume:
        logger.info("--resume: no training state in %s, starting from scratch", training_dir)
    if info.is_main:
        training_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*folder.glob(".*.tmp"), *training_dir.glob(".*.tmp")]:  # left by a killed run
            stale.unlink(missing_ok=True)
        options.to_file(training_dir / "options.yaml")
        monitor.prepare_logs(training_dir / "training_log.tsv", training_dir / "epoch_log.tsv",
                             start_step=start_epoch * steps_per_epoch, start_epoch=start_epoch)
    barrier(info)
    return start_epoch


# --- one step ------------------------------------------------------------------------------------


def apply_schedules(optimizer: torch.optim.Optimizer, sched: Schedules, step: int) -> None:
    """Set LR (all groups) and weight decay (groups with ``apply_weight_decay``) of ``step``."""
    lr, wd = float(sched.lr[step]), float(sched.weight_decay[step])
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group.get("apply_weight_decay"):
            group["weight_decay"] = wd


def sample_batch(
    data: PretrainData, order: torch.Tensor, epoch_step: int, step: int, plan: StepPlan, options: PretrainOptions,
    n_networks: int, n_patches: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """This process's augmented views ``[n_views * local, C, 100]`` and masks (masked steps) of ``step``.

    The draws come from :func:`step_generator` for the global batch (same on every process
    and after a resume); each process keeps its rows.
    """
    n_views, batch, local = options.n_views, plan.batch, plan.local
    masked = _masked_step(options.seed, step, options.mask_step_prob)
    g = step_generator(options.seed, step, data.device)
    subjects = order[epoch_step * batch : (epoch_step + 1) * batch]
    views = sample_views(data, subjects, n_views, CROP_LEN, g, plan.rows)
    views = augment_views(views, options, g, batch, plan.rows)
    x = views.reshape(n_views * local, data.n_channels, CROP_LEN)
    mask = None
    if masked:
        mask = sample_masks(n_views, batch, n_networks, n_patches, options, g, plan.rows)
        mask = mask.reshape(n_views * local, n_networks, n_patches)
    return x, mask


def clip_gradients(module: torch.nn.Module, clip: float | None) -> torch.Tensor:
    """Clip the gradient norm to ``clip`` (None: no clipping); return the norm before clipping."""
    if clip is not None:
        return torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
    return torch.nn.utils.get_total_norm([q.grad for q in module.parameters() if q.grad is not None])


# --- end of an epoch -----------------------------------------------------------------------------


def end_epoch(
    *, epoch: int, seconds: float, plan: StepPlan, means: dict[str, float], teacher_out: dict[str, torch.Tensor],
    model: SelfDistillation, optimizer: torch.optim.Optimizer, options: PretrainOptions, folder: Path,
    info: DistInfo, fingerprint: dict[str, Any], save_model, metadata: dict[str, Any] | None, checkpoint: bool,
    log_line: bool,
) -> dict[str, Any]:
    """Collapse watch on the last teacher output, epoch log row, checkpoint when due; return the epoch summary."""
    stats = monitor.embedding_stats(teacher_out["cls_embedding"], teacher_out["cls"])
    monitor.warn_if_collapsed(stats, epoch + 1, options.collapse_erank)
    summary = dict(epoch=epoch + 1, seconds=seconds, subjects_per_s=plan.steps_per_epoch * plan.batch / seconds,
                   loss=means["loss"], **stats)
    if info.is_main and log_line:
        logger.info("epoch %d/%d: loss %.4f, [CLS] effective rank %.1f, %.0f subjects/s",
                    epoch + 1, options.epochs, means["loss"], stats["proj_erank"], summary["subjects_per_s"])
    training_dir = folder / "training"
    if info.is_main:
        monitor.write_epoch_row(training_dir / "epoch_log.tsv", {
            **means, **stats, "epoch": epoch, "steps": plan.steps_per_epoch, "seconds": seconds,
            "subjects_per_s": summary["subjects_per_s"],
        })
    if checkpoint:
        done = epoch + 1
        if info.is_main:
            save_training_state(folder / STATE_NAME, epoch=done, step=done * plan.steps_per_epoch, model=model,
                                optimizer=optimizer, fingerprint=fingerprint)
            meta = dict(metadata or {})
            meta.update(epoch=done, epochs=options.epochs, steps=done * plan.steps_per_epoch)
            save_model(model.teacher.encoder, folder, meta)
            try:
                monitor.plot_loss_curve(training_dir / "training_log.tsv", training_dir / "loss_curve.png")
            except Exception as exc:  # a figure must never stop training
                logger.warning("loss curve not drawn: %s", exc)
        barrier(info)
    return summary


# --- the loop ------------------------------------------------------------------------------------


def train(
    model: SelfDistillation,
    data: PretrainData,
    options: PretrainOptions,
    folder: Path,
    info: DistInfo,
    *,
    save_model,
    metadata: dict[str, Any] | None = None,
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Pre-train ``model`` on ``data``; write checkpoints and logs under ``folder``.

    Parameters
    ----------
    model : SelfDistillation
        Student and teacher (on CPU; moved to ``info.device`` here).
    data : PretrainData
        Packed series, already on ``info.device``.
    options : PretrainOptions
    folder : Path
        The model folder ``OUTPUT_DIR/models/<name>/`` (see :mod:`.checkpoint`).
    info : DistInfo
        Rank, world size and device of this process.
    save_model : callable
        ``save_model(encoder, folder, metadata)``: writes the inference files
        (``bids_semantoks.model.save_encoder``).
    metadata : dict, optional
        Stored with the model (atlas, channel names, ...).
    stop_after_epochs : int, optional
        Testing hook: return after this many epochs, as if killed right after that
        epoch's checkpoint (schedules still span ``options.epochs``).

    Returns
    -------
    dict
        Summary: epochs run, steps, last epoch's statistics, seconds.
    """
    device = info.device
    plan = plan_steps(options, data.n_subjects, info)
    sched = Schedules.from_options(options, plan.steps_per_epoch)
    model.to(device)
    compile_encoders(model, options, device)
    if info.distributed:
        model.prepare_for_distributed_training(device)
    optimizer = build_optimizer(model, options, device)
    fingerprint = _fingerprint(options, data, plan.steps_per_epoch)
    start_epoch = prepare_run(model, optimizer, options, folder, info, fingerprint, plan.steps_per_epoch)
    loss_args = dict(n_views=options.n_views, coding_rate_eps=options.coding_rate_eps,
                     tok_loss_weight=options.tok_loss_weight, gather=all_gather_with_grad if info.distributed else None)
    n_networks, n_patches = model.student.n_networks, model.student.n_patches

    progress = monitor.make_progress(options.progress and info.is_main)
    log = monitor.StepLog(folder / "training" / "training_log.tsv", log_every=options.log_every,
                          batch_size=plan.batch, schedule_at=sched.at, reduce=lambda t: all_mean(t, info),
                          write=info.is_main, progress=progress)
    if progress is not None:
        progress.start()
    summary: dict[str, Any] = {"start_epoch": start_epoch}
    t_run = time.perf_counter()
    try:
        for epoch in range(start_epoch, options.epochs):
            order = torch.from_numpy(epoch_order(options.seed, epoch, data.n_subjects)).to(device)
            model.train()
            log.start_epoch(epoch, options.epochs, plan.steps_per_epoch)
            t_epoch = time.perf_counter()
            for it in range(plan.steps_per_epoch):
                step = epoch * plan.steps_per_epoch + it
                apply_schedules(optimizer, sched, step)
                x, mask = sample_batch(data, order, it, step, plan, options, n_networks, n_patches)
                optimizer.zero_grad(set_to_none=True)
                losses, teacher_out = model.forward_backward(
                    x, mask, ttr_weight=float(sched.ttr_weight[step]), autocast=_autocast(options, device), **loss_args
                )
                grad_norm = clip_gradients(model.student, options.clip_grad)
                optimizer.step()
                model.update_teacher(float(sched.momentum[step]))
                log.add(step, mask is not None, losses, grad_norm, completed=it + 1,
                        flush=it == plan.steps_per_epoch - 1)

            done = epoch + 1
            stop = stop_after_epochs is not None and done >= stop_after_epochs
            summary.update(end_epoch(
                epoch=epoch, seconds=time.perf_counter() - t_epoch, plan=plan, means=log.epoch_means(),
                teacher_out=teacher_out, model=model, optimizer=optimizer, options=options, folder=folder, info=info,
                fingerprint=fingerprint, save_model=save_model, metadata=metadata,
                checkpoint=done % options.checkpoint_every == 0 or done == options.epochs or stop,
                log_line=progress is None and options.progress,
            ))
            if stop:
                break
    finally:
        if progress is not None:
            progress.stop()
    summary["total_seconds"] = time.perf_counter() - t_run
    summary["steps_per_epoch"] = plan.steps_per_epoch
    return summary
