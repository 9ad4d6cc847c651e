#!/usr/bin/env python
"""GPU check of the inference path: parity on CUDA and encoder throughput.

1. Parity: the reference fixture (``../shared/fixtures/reference_parity``) run on the GPU
   in float32 with TF32 off (what ``participant --device cuda`` does), compared with
   ``expected.npz`` (target 1e-5 max abs, as on CPU); then :func:`bids_semantoks.embed.embed_series`
   with ``device="cuda"`` against the same call on CPU.
2. Throughput: the released-size encoder (D=768, 8 blocks, 457 channels in 9 networks,
   random weights) in inference mode, crops/s at ``--batch`` crops per forward, in float32,
   TF32 and bf16 autocast (and, with ``--compile``, bf16 autocast on the ``torch.compile``d
   encoder; with ``--bf16-weights``, the encoder cast to bfloat16 without autocast), plus
   the latency of one subject (8 crops).

One table: per mode the measured crops/s, the authors' anchor on an H100 (16,550 crops/s
fp16 for the half-precision rows, 5,995 fp32 for the fp32/TF32 rows; measured at batch 512;
``--anchor-scale`` for another card), the ratio and the target of issue 15 (bf16 >= 2x at
batch 1024, TF32 >= 1.5x; fp32 keeps parity, no speed target).

Needs a CUDA device, except ``--device cpu`` (a tiny smoke run of the same code: parity on
CPU, a few crops; the numbers are not GPU numbers and no ratio is printed).

Usage::

    python benchmarks/gpu_encoder.py --fixture ../shared/fixtures/reference_parity --batch 1024 --compile
    python benchmarks/gpu_encoder.py --device cpu --batch 8 --repeats 1      # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from bids_semantoks.atlas import DEFAULT_NETWORK_ORDER
from bids_semantoks.embed import embed_series
from bids_semantoks.model import Encoder, encoder_features, load_encoder, model_preset

SIZES = [61, 77, 46, 47, 26, 52, 91, 50, 7]
#: The authors' code on an H100, released size, batch 512 (issue 15), crops/s.
ANCHOR = {"card": "H100", "batch": 512, "fp16": 16550.0, "fp32": 5995.0}


def parity(fixture: Path, device: torch.device) -> dict:
    """Fixture outputs on ``device`` (fp32, TF32 off) vs expected.npz; embed_series device vs CPU."""
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
    diffs = {key: float(np.abs(value.float().cpu().numpy() - expected[key]).max()) for key, value in got.items()}
    worst = max(diffs.values())
    print(f"parity ({device.type}, fp32, TF32 off): worst max abs diff vs expected.npz {worst:.3g} "
          f"({'within' if worst <= 1e-5 else 'ABOVE'} 1e-5); " + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()))
    series = np.random.default_rng(0).standard_normal((180, x.shape[1]))
    series[:, :3] = np.nan  # a few regions without data
    kw = dict(region_names=[f"r{i}" for i in range(x.shape[1])],
              network_names=[f"n{i}" for i in range(int(expected["network_map"].max()) + 1)],
              channel_networks=expected["network_map"])
    gpu = embed_series(enc, series, device=str(device), **kw).features
    cpu = embed_series(enc.cpu(), series, device="cpu", **kw).features
    embed_diff = float(np.abs(gpu - cpu).max())
    print(f"embed_series {device.type} vs cpu: max abs diff {embed_diff:.3g} over {gpu.shape}")
    return {"parity_worst": worst, "parity": diffs, "embed_series_vs_cpu": embed_diff}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(batch: int, repeats: int, device: torch.device, *, compile_: bool = False,
               bf16_weights: bool = False, size: str = "base") -> list[dict]:
    """crops/s at ``batch`` and one-subject latency per mode; returns the rows of the table."""
    network_map = np.repeat(np.arange(len(SIZES)), SIZES).tolist()
    torch.manual_seed(0)
    enc = Encoder(model_preset(size, list(DEFAULT_NETWORK_ORDER), network_map)).to(device).eval()
    x = torch.randn(batch, len(network_map), 100, device=device)
    cuda = device.type == "cuda"
    half = (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
    modes = {"fp32 (TF32 off)": (enc, False, contextlib.nullcontext, "fp32", None)}
    if cuda:
        modes["TF32"] = (enc, True, contextlib.nullcontext, "fp32", 1.5)
    modes["bf16 autocast"] = (enc, False, half, "fp16", 2.0)
    if compile_:
        modes["bf16 autocast, compiled"] = (torch.compile(enc), False, half, "fp16", 2.0)
    if bf16_weights:
        import copy

        modes["bf16 weights (no autocast)"] = (copy.deepcopy(enc).to(torch.bfloat16), False,
                                               contextlib.nullcontext, "fp16", 2.0)
    rows, ref = [], None
    for name, (model, tf32, ctx, anchor_key, target) in modes.items():
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        out = {}
        try:
            for n in (batch, 8):
                xb = x[:n].to(next(model.parameters()).dtype)
                with torch.inference_mode(), ctx():
                    for _ in range(3):
                        y = model(xb)
                    _sync(device)
                    best = float("inf")
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        y = model(xb)
                        _sync(device)
                        best = min(best, time.perf_counter() - t0)
                out[n] = best
                if n == batch:
                    y = y.float()
                    ref = y if ref is None else ref
                    dev = float((y - ref).abs().max())
        except Exception as exc:  # e.g. no compiler: report the row, keep going
            print(f"{name}: failed ({type(exc).__name__}: {str(exc)[:200]})")
            continue
        rows.append({"mode": name, "size": size, "batch": batch, "crops_per_s": batch / out[batch], "subject_ms": 1000 * out[8],
                     "max_abs_vs_fp32": dev, "anchor_key": anchor_key, "target": target})
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return rows


def table(rows: list[dict], device: torch.device, scale: float) -> str:
    """The one results table (Markdown): measured crops/s, anchor, ratio, target."""
    cuda = device.type == "cuda"
    lines = ["| mode | model | batch | crops/s | one subject (8 crops) ms | max abs vs fp32 | anchor crops/s | ratio | target |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        anchor = ANCHOR[r["anchor_key"]] * scale
        label = f"{anchor:.0f} ({'fp16' if r['anchor_key'] == 'fp16' else 'fp32'})"
        ratio = f"{r['crops_per_s'] / anchor:.2f}x" if cuda and r["size"] == "base" else "n/a"
        target = f">= {r['target']:g}x" if r["target"] else "parity"
        lines.append(f"| {r['mode']} | {r['size']} | {r['batch']} | {r['crops_per_s']:.0f} | {r['subject_ms']:.1f} | "
                     f"{r['max_abs_vs_fp32']:.2g} | {label} | {ratio} | {target} |")
    if cuda:
        name = torch.cuda.get_device_name(device)
        same = "H100" in name and scale == 1.0
        lines.append(f"\nanchor: authors' code on an {ANCHOR['card']} at batch {ANCHOR['batch']}"
                     + ("" if same else f", scaled x{scale:g} for this card ({name})"
                        + ("" if scale != 1.0 else ": NOT scaled, pass --anchor-scale")))
    else:
        lines.append("\nCPU smoke run: no ratio (the anchors are H100 numbers)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", type=Path, default=Path(__file__).resolve().parents[2] / "shared/fixtures/reference_parity")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke run)")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--size", choices=["tiny", "small", "base"], default="base",
                    help="encoder preset (the anchors are the released size, base)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--compile", action="store_true", help="add a bf16 row with the torch.compiled encoder")
    ap.add_argument("--bf16-weights", action="store_true", help="add a row with the encoder cast to bfloat16")
    ap.add_argument("--anchor-scale", type=float, default=1.0, help="multiply the H100 anchors for another card")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA device")
            return 1
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    result: dict = {}
    if args.fixture.is_dir():
        result.update(parity(args.fixture, device))
    else:
        print(f"parity: skipped, no fixture at {args.fixture}")
    rows = throughput(args.batch, args.repeats, device, compile_=args.compile, bf16_weights=args.bf16_weights,
                      size=args.size)
    print()
    print(table(rows, device, args.anchor_scale))
    if args.json:
        args.json.write_text(json.dumps({**result, "device": str(device), "anchor": ANCHOR, "anchor_scale": args.anchor_scale, "rows": rows},
                                        indent=1))
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
