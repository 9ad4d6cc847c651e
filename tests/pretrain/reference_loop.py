"""The plain pre-training step, written out once as it stood before the DINOv2-style split.

An independent transcription of the loop (no logging, no checkpoints, one process): the
refactored :func:`bids_semantoks.pretrain.train.train` and any fast path must give the
same weights bit for bit on CPU. It uses only the public building blocks (views, masks,
losses, EMA), so a change in the trainer's wiring (order of the draws, of the loss terms,
of zero_grad/backward/clip/step/EMA) shows up here.
"""

from contextlib import nullcontext

import numpy as np
import torch

from bids_semantoks.model import Encoder, ProjectionHead
from bids_semantoks.pretrain.augment import augment_views, sample_masks, sample_views
from bids_semantoks.pretrain.data import PretrainData, select_subjects
from bids_semantoks.pretrain.losses import coding_rate_loss, masked_token_loss, ttr_loss
from bids_semantoks.pretrain.run import build_encoder_config
from bids_semantoks.pretrain.schedules import Schedules

CROP_LEN = 100


def _generator(seed, step):
    g = torch.Generator(device="cpu")
    g.manual_seed((seed * 1_000_003 + step * 7_919 + 12_345) % (2**63 - 1))
    return g


@torch.no_grad()
def _ema_plain(teacher, student, m):
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(m).add_(s.detach(), alpha=1.0 - m)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)


def plain_pretrain(options, runs, network_names, channel_networks):
    """Run every step of ``options.epochs`` epochs the plain way; return (student, teacher, step terms)."""
    from bids_semantoks.pretrain.meta_arch import SelfDistillation, param_groups

    subjects = sorted({r.subject for r in runs})
    keep = set(select_subjects(subjects, options.train_fraction, options.seed, minimum=options.batch_size))
    data = PretrainData([r for r in runs if r.subject in keep], dtype=torch.float32)
    config = build_encoder_config(options, network_names, channel_networks)
    torch.manual_seed(options.seed)
    np.random.seed(options.seed % 2**32)
    model = SelfDistillation(Encoder(config), ProjectionHead(config.dim, options.head_hidden, options.head_out))
    student, teacher = model.student, model.teacher
    optimizer = torch.optim.AdamW(param_groups(student), lr=0.0, betas=tuple(options.adam_betas), weight_decay=0.0)
    batch, n_views = options.batch_size, options.n_views
    steps = data.n_subjects // batch
    sched = Schedules.from_options(options, steps)
    n_net, n_pat = student.n_networks, student.n_patches
    rows = slice(0, batch)
    bf16 = options.mixed_precision == "bf16"
    terms = []
    for epoch in range(options.epochs):
        order = torch.from_numpy(np.random.default_rng([options.seed, epoch, 17]).permutation(data.n_subjects))
        student.train()
        for it in range(steps):
            step = epoch * steps + it
            for group in optimizer.param_groups:
                group["lr"] = float(sched.lr[step])
                if group.get("apply_weight_decay"):
                    group["weight_decay"] = float(sched.weight_decay[step])
            w_ttr = float(sched.ttr_weight[step])
            masked = bool(np.random.default_rng([options.seed, step, 1]).random() < options.mask_step_prob)
            g = _generator(options.seed, step)
            views = sample_views(data, order[it * batch:(it + 1) * batch], n_views, CROP_LEN, g, rows)
            views = augment_views(views, options, g, batch, rows)
            x = views.reshape(n_views * batch, data.n_channels, CROP_LEN)
            mask = None
            if masked:
                mask = sample_masks(n_views, batch, n_net, n_pat, options, g, rows).reshape(n_views * batch, n_net, n_pat)
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
                s_out = student(x, mask, tokens=masked, ttr=w_ttr > 0)
                with torch.no_grad():
                    t_out = teacher(x, None, tokens=masked, ttr=w_ttr > 0)
            p = s_out["cls"].shape[-1]
            l_cls = coding_rate_loss(s_out["cls"].view(n_views, batch, p), t_out["cls"].view(n_views, batch, p),
                                     options.coding_rate_eps)[0]
            loss = l_cls
            if masked:
                loss = loss + options.tok_loss_weight * masked_token_loss(
                    s_out["tokens"], t_out["tokens"], mask.view(-1, n_net * n_pat))
            if w_ttr > 0:
                loss = loss + w_ttr * ttr_loss(s_out["ttr"].view(n_views, batch, n_net, p),
                                               t_out["ttr"].view(n_views, batch, n_net, p), options.coding_rate_eps)[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), options.clip_grad)
            optimizer.step()
            _ema_plain(teacher, student, float(sched.momentum[step]))
            terms.append((step, loss.detach().item(), l_cls.detach().item(), grad_norm.item()))
    return student, teacher, terms
