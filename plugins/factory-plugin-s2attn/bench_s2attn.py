"""Peak memory and time of one attention forward + backward: S2-Attn against full causal attention.

Each measurement runs in a fresh process (peak RSS cannot be reset inside one), with one
sequence of N tokens, 4 heads of 64 dimensions in fp32, as one decoder layer sees it in training:

    python bench_s2attn.py                 # the table for N = 1024 ... 8192
    python bench_s2attn.py --lengths 4096  # one length

Modes: ``eager`` (scores materialized, transformers' attn_implementation=eager), ``sdpa``
(torch's fused kernel, attn_implementation=sdpa) and ``s2`` (this plugin, group = N/4, half
the heads shifted; each group is one fused SDPA call); ``+mask`` runs the last two with the
boolean N x N mask transformers passes for padded or packed batches.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

HEADS, DIM = 4, 64


def measure(mode: str, length: int) -> dict:
    import torch
    import torch.nn.functional as F
    from factory_plugin_s2attn.attention import s2_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, length, DIM, requires_grad=True) for _ in range(3))
    grad = torch.randn(1, HEADS, length, DIM)
    # A padded batch: transformers then passes a boolean (N, N) mask instead of is_causal (built before measuring).
    mask = torch.ones(length, length, dtype=torch.bool).tril()[None, None] if mode.endswith("+mask") else None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if mode == "eager":
        scores = (q @ k.transpose(-1, -2)) / DIM**0.5
        scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v
    elif mode == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    elif mode == "sdpa+mask":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        out = s2_attention(q, k, v, length // 4, shift=True, mask=mask)
    out.backward(grad)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "length": length, "peak_mib": (peak - before) / 1024, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--modes", nargs="+", default=["eager", "sdpa", "s2", "sdpa+mask", "s2+mask"])
    parser.add_argument("--one", nargs=2, metavar=("MODE", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]))))
        return
    print(f"{'N':>6} {'mode':>9} {'extra peak MiB':>15} {'seconds':>8}")
    for length in args.lengths:
        for mode in args.modes:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", mode, str(length)], capture_output=True, text=True, check=True
            )
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{length:>6} {mode:>9} {row['peak_mib']:>15.0f} {row['seconds']:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
