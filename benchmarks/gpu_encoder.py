#!/usr/bin/env python
"""GPU check of the inference path: parity on CUDA and encoder throughput.

1. Parity: the reference fixture (``../shared/fixtures/reference_parity``) run on the GPU
   in float32 with TF32 off (what ``participant --device cuda`` does), compared with
   ``expected.npz`` (target 1e-5 max abs, as on CPU); then :func:`bids_semantoks.embed.embed_series`
   with ``device="cuda"`` against the same call on CPU.
2. Throughput: the released-size encoder (D=768, 8 blocks, 457 channels in 9 networks,
   random weights) in inference mode, crops/s at ``--batch`` crops per forward, in float32,
   TF32 and bf16 autocast, plus the latency of one subject (8 crops).

Needs a CUDA device; prints a Markdown table.

Usage::

    python benchmarks/gpu_encoder.py --fixture ../shared/fixtures/reference_parity
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np
import torch

from bids_semantoks.atlas import DEFAULT_NETWORK_ORDER
from bids_semantoks.embed import embed_series
from bids_semantoks.model import Encoder, encoder_features, load_encoder, model_preset

SIZES = [61, 77, 46, 47, 26, 52, 91, 50, 7]


def parity(fixture: Path, device: torch.device) -> None:
    inputs = dict(np.load(fixture / "inputs.npz"))
    expected = dict(np.load(fixture / "expected.npz"))
    enc = load_encoder(fixture / "checkpoint.pth", network_map=expected["network_map"]).to(device).eval()
    x = torch.from_numpy(inputs["x"]).to(device)
    mask = torch.from_numpy(inputs["mask"]).to(device)
    with torch.inference_mode():
        tokens = enc(x)
        got = {
            "tokens": tokens, "cls": encoder_features(tokens)["cls"], "cls_avg": encoder_features(tokens)["cls_avg"],
            "tokens_masked": enc(x, mask), "tokenizer_out": enc.tokenize(x),
        }
    print("\n| output (CUDA, fp32, TF32 off) | max abs diff vs expected.npz | within 1e-5 |")
    print("|---|---|---|")
    for key, value in got.items():
        diff = float(np.abs(value.float().cpu().numpy() - expected[key]).max())
        print(f"| {key} | {diff:.3g} | {diff <= 1e-5} |")
    series = np.random.default_rng(0).standard_normal((180, x.shape[1]))
    series[:, :3] = np.nan  # a few regions without data
    kw = dict(region_names=[f"r{i}" for i in range(x.shape[1])],
              network_names=[f"n{i}" for i in range(int(expected["network_map"].max()) + 1)],
              channel_networks=expected["network_map"])
    gpu = embed_series(enc, series, device=str(device), **kw).features
    cpu = embed_series(enc.cpu(), series, device="cpu", **kw).features
    print(f"\nembed_series cuda vs cpu: max abs diff {np.abs(gpu - cpu).max():.3g} over {gpu.shape}")


def throughput(batch: int, repeats: int, device: torch.device) -> None:
    network_map = np.repeat(np.arange(len(SIZES)), SIZES).tolist()
    torch.manual_seed(0)
    enc = Encoder(model_preset("base", list(DEFAULT_NETWORK_ORDER), network_map)).to(device).eval()
    x = torch.randn(batch, len(network_map), 100, device=device)
    modes = {
        "fp32 (TF32 off)": (False, contextlib.nullcontext),
        "TF32": (True, contextlib.nullcontext),
        "bf16 autocast": (False, lambda: torch.autocast("cuda", dtype=torch.bfloat16)),
    }
    print(f"\n| mode | crops/s (batch {batch}) | one subject (8 crops), ms |")
    print("|---|---|---|")
    ref = None
    for name, (tf32, ctx) in modes.items():
        torch.backends.cuda.matmul.allow_tf32 = tf32
        out = {}
        for n in (batch, 8):
            xb = x[:n]
            with torch.inference_mode(), ctx():
                for _ in range(3):
                    y = enc(xb)
                torch.cuda.synchronize(device)
                best = float("inf")
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    y = enc(xb)
                    torch.cuda.synchronize(device)
                    best = min(best, time.perf_counter() - t0)
            out[n] = best
            if n == batch:
                y = y.float()
                ref = y if ref is None else ref
                dev = float((y - ref).abs().max())
        print(f"| {name} | {batch / out[batch]:.0f} | {1000 * out[8]:.1f} | (max abs vs fp32 {dev:.2g})")
    torch.backends.cuda.matmul.allow_tf32 = False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", type=Path, default=Path(__file__).resolve().parents[2] / "shared/fixtures/reference_parity")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    parity(args.fixture, device)
    throughput(args.batch, args.repeats, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
