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
"""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from bids_semantoks.errors import UsageError
from bids_semantoks.pretrain import monitor
from bids_semantoks.pretrain.augment import augment_views, sample_masks, sample_views
from bids_semantoks.pretrain.checkpoint import (
    STATE_NAME,
    atomic_torch_save,
    atomic_write_text,
    load_state,
    rng_state,
    set_rng_state,
)
from bids_semantoks.pretrain.data import PretrainData
from bids_semantoks.pretrain.distributed import DistInfo, barrier
from bids_semantoks.pretrain.losses import all_gather_with_grad, coding_rate_loss, masked_token_loss, ttr_loss
from bids_semantoks.pretrain.meta_arch import SelfDistillation, ema_update, param_groups
from bids_semantoks.pretrain.options import PretrainOptions
from bids_semantoks.pretrain.schedules import Schedules

__all__ = ["train", "step_generator", "epoch_order"]

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


def _all_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= info.world_size
    return t


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
    batch = options.batch_size
    if batch % info.world_size:
        raise UsageError(f"--batch-size {batch} is not divisible by the {info.world_size} processes; change either")
    steps_per_epoch = data.n_subjects // batch
    if steps_per_epoch == 0:
        raise UsageError(
            f"--batch-size {batch} exceeds the {data.n_subjects} selected subjects (drop_last leaves no step); "
            "lower --batch-size or raise --train-fraction"
        )
    local = batch // info.world_size
    rows = slice(info.rank * local, (info.rank + 1) * local)
    sched = Schedules.from_options(options, steps_per_epoch)
    n_views = options.n_views
    n_networks, n_patches = model.student.n_networks, model.student.n_patches
    n_tokens = n_networks * n_patches
    gather = all_gather_with_grad if info.distributed else None

    model.to(device)
    if options.compile is True or (options.compile == "auto" and device.type == "cuda"):
        if options.compile == "auto":  # a missing compiler toolchain costs speed, not the run
            import torch._dynamo as dynamo

            dynamo.config.suppress_errors = True
        model.student.encoder.compile()
        model.teacher.encoder.compile()
    student_module = model.student
    teacher = model.teacher
    student = (
        DistributedDataParallel(student_module, device_ids=[device.index] if device.type == "cuda" else None,
                                find_unused_parameters=True)
        if info.distributed else student_module
    )
    groups = param_groups(student_module)
    # fused kernel on CUDA (one launch for all parameters); the default foreach path on CPU
    optimizer = torch.optim.AdamW(groups, lr=0.0, betas=tuple(options.adam_betas), weight_decay=0.0,
                                  fused=True if device.type == "cuda" else None)

    training_dir = folder / "training"
    state_path = folder / STATE_NAME
    log_path = training_dir / "training_log.tsv"
    epoch_log_path = training_dir / "epoch_log.tsv"
    fingerprint = _fingerprint(options, data, steps_per_epoch)
    start_epoch = 0
    if options.resume and state_path.is_file():
        state = load_state(state_path)
        if state["fingerprint"] != fingerprint:
            raise UsageError(
                f"{state_path}: saved run used other settings or subjects; resume with the same options, "
                "or start without --resume (after moving the folder)"
            )
        student_module.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start_epoch = int(state["epoch"])
        logger.info("resuming %s at epoch %d of %d", folder.name, start_epoch, options.epochs)
    elif options.resume:
        logger.info("--resume: no training state in %s, starting from scratch", training_dir)

    start_step = start_epoch * steps_per_epoch
    if info.is_main:
        training_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*folder.glob(".*.tmp"), *training_dir.glob(".*.tmp")]:  # left by a killed run
            stale.unlink(missing_ok=True)
        options.to_file(training_dir / "options.yaml")
        header = "\t".join(monitor.STEP_COLUMNS) + "\n"
        epoch_header = "epoch\tsteps\tloss\tloss_cls\tcls_alignment\tloss_tok\tloss_ttr\tcls_std\tproj_std\tproj_erank\tseconds\tsubjects_per_s\n"
        if start_epoch > 0 and log_path.is_file():  # drop steps logged after the checkpoint
            kept = [ln for ln in log_path.read_text().splitlines(True)[1:] if int(ln.split("\t", 1)[0]) < start_step]
            atomic_write_text(header + "".join(kept), log_path)
            kept_e = []
            if epoch_log_path.is_file():
                kept_e = [ln for ln in epoch_log_path.read_text().splitlines(True)[1:]
                          if int(ln.split("\t", 1)[0]) < start_epoch]
            atomic_write_text(epoch_header + "".join(kept_e), epoch_log_path)
        else:
            atomic_write_text(header, log_path)
            atomic_write_text(epoch_header, epoch_log_path)
    barrier(info)

    nan = torch.tensor(float("nan"), device=device)  # placeholder of terms not computed on a step
    progress = monitor.make_progress(options.progress and info.is_main)
    if progress is not None:
        progress.start()
    summary: dict[str, Any] = {"start_epoch": start_epoch}
    t_run = time.perf_counter()
    try:
        for epoch in range(start_epoch, options.epochs):
            order = torch.from_numpy(epoch_order(options.seed, epoch, data.n_subjects)).to(device)
            student.train()
            pending: list[tuple[int, bool, torch.Tensor]] = []
            epoch_terms: list[torch.Tensor] = []
            task = None
            if progress is not None:
                task = progress.add_task("", total=steps_per_epoch, epoch=f"{epoch + 1}/{options.epochs}", info="")
            t_epoch = time.perf_counter()
            t_flush, n_flush = t_epoch, 0
            last_out = None
            for it in range(steps_per_epoch):
                step = epoch * steps_per_epoch + it
                lr, wd = float(sched.lr[step]), float(sched.weight_decay[step])
                for group in optimizer.param_groups:
                    group["lr"] = lr
                    if group.get("apply_weight_decay"):
                        group["weight_decay"] = wd
                w_ttr = float(sched.ttr_weight[step])
                masked = _masked_step(options.seed, step, options.mask_step_prob)

                g = step_generator(options.seed, step, device)
                subjects = order[it * batch : (it + 1) * batch]
                views = sample_views(data, subjects, n_views, CROP_LEN, g, rows)
                views = augment_views(views, options, g, batch, rows)
                x = views.reshape(n_views * local, data.n_channels, CROP_LEN)
                mask = None
                if masked:
                    mask = sample_masks(n_views, batch, n_networks, n_patches, options, g, rows)
                    mask = mask.reshape(n_views * local, n_networks, n_patches)

                with _autocast(options, device):
                    s_out = student(x, mask, tokens=masked, ttr=w_ttr > 0)
                    with torch.no_grad():
                        t_out = teacher(x, None, tokens=masked, ttr=w_ttr > 0)

                p = s_out["cls"].shape[-1]
                l_cls, cls_align, cls_rate = coding_rate_loss(
                    s_out["cls"].view(n_views, local, p), t_out["cls"].view(n_views, local, p),
                    options.coding_rate_eps, gather,
                )
                loss = l_cls
                l_tok = l_ttr = ttr_align = ttr_rate = nan
                if masked:
                    l_tok = masked_token_loss(s_out["tokens"], t_out["tokens"], mask.view(-1, n_tokens))
                    loss = loss + options.tok_loss_weight * l_tok
                if w_ttr > 0:
                    l_ttr, ttr_align, ttr_rate = ttr_loss(
                        s_out["ttr"].view(n_views, local, n_networks, p),
                        t_out["ttr"].view(n_views, local, n_networks, p),
                        options.coding_rate_eps, gather,
                    )
                    loss = loss + w_ttr * l_ttr

                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if options.clip_grad is not None:
                    grad_norm = torch.nn.utils.clip_grad_norm_(student_module.parameters(), options.clip_grad)
                else:
                    grad_norm = torch.nn.utils.get_total_norm(
                        [q.grad for q in student_module.parameters() if q.grad is not None]
                    )
                optimizer.step()
                ema_update(teacher, student_module, float(sched.momentum[step]))

                terms = torch.stack([loss, l_cls, cls_align, cls_rate, l_tok, l_ttr, ttr_align, ttr_rate,
                                     grad_norm.to(loss.dtype)]).detach()
                pending.append((step, masked, terms))
                last_out = t_out
                n_flush += 1
                if len(pending) >= options.log_every or it == steps_per_epoch - 1:
                    values = _all_mean(torch.stack([t for _, _, t in pending]), info).cpu().numpy()
                    epoch_terms.append(torch.from_numpy(values))
                    rows_out = []
                    for (s, was_masked, _), v in zip(pending, values):
                        row = dict(zip(monitor.STEP_COLUMNS[3:12], v.tolist()))
                        row.update(step=s, epoch=epoch, masked=int(was_masked), **sched.at(s))
                        rows_out.append(row)
                    pending = []
                    now = time.perf_counter()
                    speed = n_flush * batch / max(now - t_flush, 1e-9)
                    t_flush, n_flush = now, 0
                    if info.is_main:
                        with open(log_path, "a") as fh:
                            fh.write(monitor.format_rows(rows_out))
                    if progress is not None:
                        last = rows_out[-1]
                        progress.update(
                            task, completed=it + 1,
                            info=f"loss {last['loss']:.3f} cls {last['loss_cls']:.3f} "
                                 f"tok {last['loss_tok']:.3f} ttr {last['loss_ttr']:.3f} | {speed:.0f} subj/s",
                        )

            # --- end of epoch: collapse watch, epoch log, checkpoint -----------------------------
            seconds = time.perf_counter() - t_epoch
            with warnings.catch_warnings():  # all-NaN columns (no masked step) are fine
                warnings.simplefilter("ignore", RuntimeWarning)
                means = np.nanmean(torch.cat(epoch_terms).numpy(), axis=0)
            stats = monitor.embedding_stats(last_out["cls_embedding"], last_out["cls"])
            monitor.warn_if_collapsed(stats, epoch + 1, options.collapse_erank)
            summary.update(epoch=epoch + 1, seconds=seconds, subjects_per_s=steps_per_epoch * batch / seconds,
                           loss=float(means[0]), **stats)
            if info.is_main and progress is None and options.progress:
                logger.info("epoch %d/%d: loss %.4f, [CLS] effective rank %.1f, %.0f subjects/s",
                            epoch + 1, options.epochs, float(means[0]), stats["proj_erank"], summary["subjects_per_s"])
            if info.is_main:
                with open(epoch_log_path, "a") as fh:
                    vals = [epoch, steps_per_epoch, means[0], means[1], means[2], means[4], means[5],
                            stats["cls_std"], stats["proj_std"], stats["proj_erank"], seconds, summary["subjects_per_s"]]
                    fh.write("\t".join(monitor._fmt(v) for v in vals) + "\n")
            done = epoch + 1
            last_epoch = done == options.epochs or (stop_after_epochs is not None and done >= stop_after_epochs)
            if done % options.checkpoint_every == 0 or last_epoch:
                if info.is_main:
                    atomic_torch_save(
                        {
                            "epoch": done,
                            "step": done * steps_per_epoch,
                            "student": student_module.state_dict(),
                            "teacher": teacher.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "rng": rng_state(),
                            "fingerprint": fingerprint,
                        },
                        state_path,
                    )
                    meta = dict(metadata or {})
                    meta.update(epoch=done, epochs=options.epochs, steps=done * steps_per_epoch)
                    save_model(teacher.encoder, folder, meta)
                    try:
                        monitor.plot_loss_curve(log_path, training_dir / "loss_curve.png")
                    except Exception as exc:  # a figure must never stop training
                        logger.warning("loss curve not drawn: %s", exc)
                barrier(info)
            if stop_after_epochs is not None and done >= stop_after_epochs:
                break
    finally:
        if progress is not None:
            progress.stop()
    summary["total_seconds"] = time.perf_counter() - t_run
    summary["steps_per_epoch"] = steps_per_epoch
    return summary
