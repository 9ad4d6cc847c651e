#!/usr/bin/env python
"""Benchmark: our encoder vs a straightforward per-network implementation of the same spec.

Released size (D=768, 8 blocks, 12 heads, 9 networks of 61..7 channels, 457 channels),
random weights, CPU float32, ``torch.set_num_threads(2)``. Both variants share the
weights. Four variants:

- straightforward unbatched: one crop at a time, the literal per-network tokenizer
  (:meth:`SemanticTokenizer.forward_reference`), attention written as
  ``softmax(q k^T / sqrt(d)) v`` (the baseline of the target);
- straightforward (per-network loop): the same literal tokenizer, but batched crops and
  our transformer (isolates the tokenizer);
- ours: batched crops, SDPA, the GEMM tokenizer (long convolution as one banded
  ``bmm`` per network, projection as one GEMM; see ``bids_semantoks/model/tokenizer.py``),
  and the linear layers through oneDNN's matmul with bias and GELU fused
  (:func:`bids_semantoks.model.layers.linear`);
- ours, F.linear GEMMs: the same without oneDNN (MKL GEMMs behind ``F.linear``, GELU as
  a separate pass), to show what that choice is worth on the machine at hand.

The best of ``--repeats`` is reported; run it on an otherwise idle machine (the numbers
move by 20-40 % under load).

Usage::

    python benchmarks/encoder_speed.py               # batch 64 crops, 7 repeats
    python benchmarks/encoder_speed.py --quick       # batch 16, 3 repeats
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bids_semantoks.atlas import DEFAULT_NETWORK_ORDER
from bids_semantoks.model import Encoder, layers, model_preset

SIZES = [61, 77, 46, 47, 26, 52, 91, 50, 7]


def straightforward_forward(enc: Encoder, x: torch.Tensor) -> torch.Tensor:
    """The spec written plainly: one crop at a time, the per-network tokenizer loop,
    attention as softmax(q k^T / sqrt(d)) v, the same weights."""
    cfg = enc.config
    out = []
    for crop in x:
        tok = enc.tokenizer.forward_reference(crop[None]) + enc.network_embed[:, None, :] + enc.time_embed[None]
        h = torch.cat([enc.cls_token[0], tok[0].flatten(0, 1)], dim=0)  # (1 + N*P, D)
        for blk in enc.blocks:
            y = blk.norm1(h)
            q, k, v = blk.attn.qkv(y).reshape(h.shape[0], 3, cfg.heads, -1).permute(1, 2, 0, 3)
            att = torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5), dim=-1)
            y = blk.attn.proj((att @ v).transpose(0, 1).reshape(h.shape[0], -1))
            h = h + blk.ls1(y)
            h = h + blk.ls2(blk.mlp.fc2(torch.nn.functional.gelu(blk.mlp.fc1(blk.norm2(h)))))
        out.append(enc.norm(h))
    return torch.stack(out)


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="crops per forward for the throughput rows")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="batch 16, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.repeats = 16, 3
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network_map = np.repeat(np.arange(len(SIZES)), SIZES).tolist()
    enc = Encoder(model_preset("base", list(DEFAULT_NETWORK_ORDER), network_map)).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, len(network_map), 100, generator=gen)
    subject = x[:8]

    def run(reference: bool, fn):
        enc.reference = reference
        try:
            return fn()
        finally:
            enc.reference = False

    onednn_op = layers._ONEDNN_LINEAR
    with torch.inference_mode():
        diff_tok = float((enc.tokenizer(x) - enc.tokenizer.forward_reference(x)).abs().max())
        diff_enc = float((run(False, lambda: enc(x)) - run(True, lambda: enc(x))).abs().max())
        diff_plain = float((enc(x) - straightforward_forward(enc, x)).abs().max())
        rows = {}
        rows["straightforward unbatched (1 crop at a time)"] = {
            "tokenizer": float("nan"),
            "encoder": best_time(lambda: straightforward_forward(enc, x), args.repeats),
            "subject": best_time(lambda: straightforward_forward(enc, subject), args.repeats),
        }
        for name, reference, onednn in (("straightforward (per-network loop)", True, True),
                                        ("ours, F.linear GEMMs (no oneDNN)", False, False),
                                        ("ours", False, True)):
            layers._ONEDNN_LINEAR = onednn_op if onednn else None
            rows[name] = {
                "tokenizer": best_time(lambda: run(reference, lambda: enc.tokenize(x)), args.repeats),
                "encoder": best_time(lambda: run(reference, lambda: enc(x)), args.repeats),
                "subject": best_time(lambda: run(reference, lambda: enc(subject)), args.repeats),
            }
        layers._ONEDNN_LINEAR = onednn_op

    n = args.batch
    print(f"Encoder speed, CPU float32, {torch.get_num_threads()} threads, D=768 depth 8, "
          f"{len(network_map)} channels, batch {n} crops, best of {args.repeats}")
    print(f"{'variant':46s} {'tokenizer crops/s':>18s} {'encoder crops/s':>16s} {'8 crops (s)':>12s}")
    for name, r in rows.items():
        print(f"{name:46s} {n / r['tokenizer']:18.1f} {n / r['encoder']:16.1f} {r['subject']:12.3f}")
    ours = rows["ours"]
    for label, key in (("batched per-network loop", "straightforward (per-network loop)"),
                       ("unbatched", "straightforward unbatched (1 crop at a time)")):
        base = rows[key]
        print(f"{'speed-up, ours / ' + label:46s} {base['tokenizer'] / ours['tokenizer']:17.2f}x "
              f"{base['encoder'] / ours['encoder']:15.2f}x {base['subject'] / ours['subject']:11.2f}x")
    print(f"max abs difference: tokenizer {diff_tok:.2e}, encoder tokens {diff_enc:.2e}, "
          f"unbatched plain {diff_plain:.2e} (limit 1e-5)")
    if max(diff_tok, diff_enc, diff_plain) > 1e-5:
        raise SystemExit("FAIL: the two implementations differ by more than 1e-5")


if __name__ == "__main__":
    main()
