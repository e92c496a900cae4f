"""Kernel benchmark: accuracy (SQNR per recipe) and storage everywhere; speed vs torch bf16 on CUDA only.

`python -m worldlab.kernels.bench [--json]`. On CPU the timing section says it needs CUDA and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from worldlab.kernels import fp8, nvfp4
from worldlab.kernels.kv_cache import make_kv_cache
from worldlab.kernels.linear import QuantRecipe, quantize_weight, quantized_linear

RECIPES = (QuantRecipe(), QuantRecipe(0.5), QuantRecipe(None, 32), QuantRecipe(0.5, 32))


def sqnr_db(ref: torch.Tensor, got: torch.Tensor) -> float:
    return round(float(10 * torch.log10(ref.pow(2).sum() / (ref - got).pow(2).sum())), 2)


def activations(kind: str, M: int, K: int, g: torch.Generator) -> torch.Tensor:
    if kind == "gauss":
        return torch.randn(M, K, generator=g)
    x = torch.distributions.StudentT(3.0).sample((M, K))
    x[:, torch.randperm(K, generator=g)[: K // 64]] *= 30  # outlier channels
    return x


def weights(kind: str, N: int, K: int, g: torch.Generator) -> torch.Tensor:
    if kind == "gauss":
        return torch.randn(N, K, generator=g) / K**0.5
    U, _ = torch.linalg.qr(torch.randn(N, N, generator=g))
    V, _ = torch.linalg.qr(torch.randn(K, K, generator=g))
    S = torch.logspace(0, -2, min(N, K))  # trained weights have a decaying spectrum
    return (U[:, : len(S)] * S) @ V[:, : len(S)].t()


def accuracy(M=512, K=1024, N=1024) -> dict:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(M, K, generator=g)
    out = {"round_trip_sqnr_db": {"nvfp4": sqnr_db(x, nvfp4.dequantize(nvfp4.quantize(x))),
                                  "fp8": sqnr_db(x, fp8.dequantize(fp8.quantize(x)))},
           "matmul_shape": [M, K, N], "matmul_sqnr_db": {}}
    for data in ("gauss", "heavy"):
        xa, w = activations(data, M, K, g), weights(data, N, K, g)
        y = xa @ w.t()
        row = {}
        for fmt in ("nvfp4", "fp8"):
            for r in RECIPES:
                qw = quantize_weight(w, fmt, r, act_amax=xa.abs().amax(0))
                row[f"{'w4a4' if fmt == 'nvfp4' else 'w8a8'}:{r.name}"] = sqnr_db(y, quantized_linear(xa, qw))
        out["matmul_sqnr_db"][data] = row
    return out


def storage(heads=4, head_dim=64, tokens=64, sink=1, window=12) -> dict:
    res = {"shape": {"heads": heads, "head_dim": head_dim, "tokens_per_frame": tokens, "sink": sink, "window": window}}
    for kind in ("none", "fp8", "nvfp4"):
        c = make_kv_cache(kind, batch=1, heads=heads, head_dim=head_dim, tokens_per_frame=tokens, sink=sink,
                          window=window)
        res[kind] = {"kv_bytes": c.kv_bytes(), "bytes_per_element": round(c.kv_bytes() / c.elements(), 4),
                     "ratio_vs_bf16": round(c.kv_bytes() / (2 * c.elements()), 4)}
    res["bf16_bytes_per_element"] = 2.0
    return res


def _time_cuda(fn, iters=50) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def speed() -> dict:
    """Triton kernels vs torch bf16 on CUDA; on CPU there is nothing meaningful to time."""
    if not torch.cuda.is_available():
        return {"skipped": "needs CUDA: the Triton kernels only run under the interpreter on this machine"}
    dev = torch.device("cuda")
    res = {}
    for M, K, N in ((64, 256, 256), (4096, 4096, 4096)):
        x = torch.randn(M, K, device=dev)
        w = torch.randn(N, K, device=dev)
        xb, wb = x.bfloat16(), w.bfloat16()
        flops = 2 * M * N * K
        base = _time_cuda(lambda: xb @ wb.t())
        for fmt in ("nvfp4", "fp8"):
            qw = quantize_weight(w, fmt)
            ms = _time_cuda(lambda: quantized_linear(x, qw))
            res[f"{fmt}_linear_{M}x{K}x{N}"] = {"ms": ms, "tflops": flops / ms / 1e9, "bf16_ms": base,
                                                "speedup_vs_bf16": base / ms}
    c = make_kv_cache("nvfp4", batch=8, heads=8, head_dim=64, tokens_per_frame=64, sink=1, window=12, device=dev)
    for _ in range(13):
        c.append_frame(torch.randn(8, 8, 64, 64, device=dev), torch.randn(8, 8, 64, 64, device=dev))
    q = torch.randn(8, 8, 64, 64, device=dev)
    ms = _time_cuda(lambda: c.attend(q))
    res["nvfp4_attention"] = {"ms": ms, "gb_per_s": c.kv_bytes() / ms / 1e6}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m worldlab.kernels.bench", description=__doc__)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    t0 = time.time()
    result = {"device": "cuda" if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
              "storage": storage(), "accuracy": accuracy(), "speed": speed()}
    result["seconds"] = round(time.time() - t0, 1)
    if args.json:
        print(json.dumps(result))
        return 0
    st = result["storage"]
    print(f"KV storage at window {st['shape']['window']} (bf16 = 2 bytes/element):")
    for kind in ("none", "fp8", "nvfp4"):
        print(f"  {kind:6s} {st[kind]['bytes_per_element']:.4f} B/elem  {st[kind]['ratio_vs_bf16']:.4f}x bf16")
    acc = result["accuracy"]
    print(f"round-trip SQNR on N(0,1): nvfp4 {acc['round_trip_sqnr_db']['nvfp4']} dB, fp8 {acc['round_trip_sqnr_db']['fp8']} dB")
    for data, row in acc["matmul_sqnr_db"].items():
        print(f"matmul SQNR ({data} activations, {acc['matmul_shape']}):")
        for name, v in row.items():
            print(f"  {name:28s} {v:6.2f} dB")
    sp = result["speed"]
    if "skipped" in sp:
        print(f"speed: {sp['skipped']}")
    else:
        for name, v in sp.items():
            print(f"  {name}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
