"""Pre-training throughput: subjects/s, ms/step and peak memory of the real training loop.

Runs :func:`bids_semantoks.pretrain.train.train` (the code a pre-training run uses:
view sampling, cropping, augmentation and masking as tensor ops on the device,
student + teacher, losses, AdamW, EMA, per-step logging) on synthetic model-ready
series with the default atlas grouping (457 channels, 9 networks), 180 TRs per run as
in UK Biobank. Two epochs are run; the second (steady state, after allocator /
autotuning warm-up) is timed. Nothing is written except the logs in a temporary folder.

- CUDA available: the full configuration, ``base`` model at batch 512 (bf16 autocast),
  eager and with ``torch.compile`` (the default on CUDA), compared with the authors' anchor
  on an H100: 285 ms/step = ~1,780 subjects/s, 17.1 GiB. Epoch 2 of the two variants sees
  the same data, views and masks (same seed), so their mean losses should agree to bf16
  precision: the table prints them.
- CPU: a small configuration (``small`` and ``tiny`` models, batch 32) so the script finishes
  in about a minute; the numbers show the pipeline works, not GPU speed.

Usage::

    python benchmarks/pretrain_throughput.py               # auto: CUDA full config, else CPU small
    python benchmarks/pretrain_throughput.py --device cpu --size tiny --batch 16 --steps 4
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bids_semantoks.model import Encoder, ProjectionHead
from bids_semantoks.pretrain.data import PretrainData, RunSeries
from bids_semantoks.pretrain.distributed import DistInfo, resolve_device
from bids_semantoks.pretrain.meta_arch import SelfDistillation
from bids_semantoks.pretrain.options import PretrainOptions
from bids_semantoks.pretrain.run import build_encoder_config
from bids_semantoks.pretrain.train import train

#: Region counts per network of the default 457-region atlas (MODEL_SPEC section 2).
DEFAULT_SIZES = {"Vis": 61, "SomMot": 77, "DorsAttn": 46, "SalVentAttn": 47, "Limbic": 26, "Cont": 52,
                 "Default": 91, "Subcortex": 50, "Cerebellum": 7}
ANCHOR = {"ms_per_step": 285.0, "subjects_per_s": 1780.0, "peak_gib": 17.1}


def _runs(n_subjects: int, n_channels: int, length: int = 180) -> list[RunSeries]:
    rng = np.random.default_rng(0)
    return [RunSeries(f"{i:05d}", f"r{i}", rng.standard_normal((length, n_channels), dtype=np.float32))
            for i in range(n_subjects)]


def measure(size: str, batch: int, steps: int, device: torch.device, compile_: bool = False,
            profile: bool = False) -> dict:
    networks = list(DEFAULT_SIZES)
    channel_networks = [i for i, n in enumerate(networks) for _ in range(DEFAULT_SIZES[n])]
    options = PretrainOptions(
        model_size=size, batch_size=batch, epochs=2, warmup_epochs=0.5, progress=False,
        log_every=steps, checkpoint_every=10**6, compile=compile_, device=str(device),
        data_dtype="float16",
    )
    data = PretrainData(_runs(batch * steps, len(channel_networks)), dtype=torch.float16).to(device)
    cfg = build_encoder_config(options, networks, channel_networks)
    torch.manual_seed(0)
    model = SelfDistillation(Encoder(cfg), ProjectionHead(cfg.dim, options.head_hidden, options.head_out))
    n_params = sum(p.numel() for p in model.student.encoder.parameters())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = train(model, data, options, Path(tmp) / "bench", DistInfo(0, 1, 0, device),
                        save_model=lambda *a, **k: None)
        total = time.perf_counter() - t0
    if profile:  # one more (short) run under the profiler: where a step's time goes
        acts = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        short = options.model_copy(update={"epochs": 1})
        part = PretrainData(_runs(batch * 3, len(channel_networks)), dtype=torch.float16).to(device)
        with tempfile.TemporaryDirectory() as tmp, torch.profiler.profile(activities=acts) as prof:
            train(model, part, short, Path(tmp) / "prof", DistInfo(0, 1, 0, device), save_model=lambda *a, **k: None)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60), flush=True)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        mem = f"{peak:.1f} GiB (GPU)"
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 2**20
        mem = f"+{peak:.2f} GiB RSS"
    sps = summary["subjects_per_s"]
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()}",
        "model": f"{size} (D={cfg.dim}, depth {cfg.depth}, {n_params / 1e6:.1f} M)",
        "batch": batch, "compile": compile_, "steps": steps,
        "ms_per_step": 1000.0 * batch / sps, "subjects_per_s": sps, "peak": peak, "memory": mem,
        "total_s": total, "loss": summary["loss"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", choices=["tiny", "small", "base"], default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="steps per epoch (epoch 2 is timed)")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of 3 more steps")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        configs = [(args.size or "base", args.batch or 512, args.steps or 10, c) for c in (False, True)]
    else:
        sizes = [args.size] if args.size else ["tiny", "small"]
        configs = [(s, args.batch or 32, args.steps or 3, False) for s in sizes]
    rows = []
    for size, batch, steps, comp in configs:
        try:
            rows.append(measure(size, batch, steps, device, comp, args.profile and not comp))
            print(rows[-1], flush=True)
        except Exception as exc:  # e.g. compile unavailable: report, keep going
            print(f"{size} batch {batch} compile={comp}: failed ({type(exc).__name__}: {exc})", file=sys.stderr)
    print("\n| device | model | batch | compile | ms/step | subjects/s | peak memory | epoch-2 mean loss |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['device']} | {r['model']} | {r['batch']} | {r['compile']} | {r['ms_per_step']:.0f} | "
              f"{r['subjects_per_s']:.0f} | {r['memory']} | {r['loss']:.5f} |")
    if device.type == "cuda":
        print(f"| H100, authors' code (anchor) | base | 512 | - | {ANCHOR['ms_per_step']:.0f} | "
              f"{ANCHOR['subjects_per_s']:.0f} | {ANCHOR['peak_gib']} GiB | - |")
        for r in rows:
            print(f"speed-up vs anchor ({r['model']}, compile={r['compile']}): "
                  f"{r['subjects_per_s'] / ANCHOR['subjects_per_s']:.2f}x (target 3x)")
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
