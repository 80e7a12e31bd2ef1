#!/usr/bin/env python3
"""Analytic payload sizes of fcc's gradient compressors, written from the
packed formats the README documents (not from fcc's code), and a checker of
what trainers measure.

  comm_payload.py check METRICS.jsonl --model M.onnx --method SPEC \
      [--scope layerwise|entire-model] [--ranks W] [--min-test-acc A]
      Every epoch line of METRICS must report, per rank, exactly the analytic
      bytes per step (thresholds: at most the capacity, less than dense), and
      the run must reach --min-test-acc. SPEC is one method for every
      gradient or, layerwise, per-parameter rules 'GLOB=METHOD,...': each
      parameter takes the method of the first glob (fnmatch, case-sensitive)
      that matches its name; unmatched parameters travel as dense fp32.
  comm_payload.py table MODEL.onnx [MODEL.onnx ...]
      Prints bytes per step and rank for every method and scope.

Per rank and step, each compressed entity (one gradient, or all gradients
flattened with --compress-scope entire-model) sends one payload:
  none        4n bytes (fp32)            fp16, bf16  2n
  randomk:K   4k, k = ceil(K n)          topk:K      min(8k, ceil(n/8) + 4k)
  thresholdv, adaptive-threshold: 4 + min(8c, ceil(n/8) + 4c), c kept entries
  terngrad    4 + ceil(n/4)
  qsgd:S[:bucket=B]  4 ceil(n/B) + ceil(n ceil(log2(S+1)) / 8) + ceil(n/8)
Gradients of a layerwise program that no rule compresses travel as dense
fp32 (4n). Threshold payloads vary from step to step: on several ranks each
also sends its 8-byte length first, so a rank's mean bytes per step lie
between 12 per payload (nothing kept) and 8 + the capacity per payload.
"""
import argparse
import fnmatch
import json
import math
import sys

import onnx


def params_of(path):
    """(name, numel) of every trainable parameter of an fcc-models ONNX file
    (graph inputs other than the image, or initializers), BatchNorm running
    statistics excluded."""
    m = onnx.load(path)
    out = []
    seen = set()
    for t in m.graph.initializer:
        seen.add(t.name)
        out.append((t.name, math.prod(t.dims)))
    for i, inp in enumerate(m.graph.input):
        if inp.name in seen or i == 0:
            continue
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        out.append((inp.name, math.prod(dims)))
    return [(n, c) for n, c in out
            if not n.endswith("running_mean") and not n.endswith("running_var")
            and not n.endswith("num_batches_tracked")]


def parse(spec):
    parts = spec.split(":")
    method = parts[0]
    opts = {"method": method}
    if method in ("randomk", "topk"):
        opts["ratio"] = float(parts[1])
    elif method == "thresholdv":
        opts["threshold"] = float(parts[1])
    elif method == "qsgd":
        opts["levels"] = int(parts[1]) if len(parts) > 1 else 255
        opts["bucket"] = 0
        for p in parts[2:]:
            if p.startswith("bucket="):
                opts["bucket"] = int(p[len("bucket="):])
    return opts


def kept(ratio, n):
    return min(n, max(1, math.ceil(ratio * n)))


def capacity(spec, n):
    """Payload bytes of n entries (an upper bound for the thresholds)."""
    o = parse(spec)
    m = o["method"]
    if m == "none":
        return 4 * n
    if m in ("fp16", "bf16"):
        return 2 * n
    if m == "randomk":
        return 4 * kept(o["ratio"], n)
    if m == "topk":
        k = kept(o["ratio"], n)
        return min(8 * k, (n + 7) // 8 + 4 * k)
    if m in ("thresholdv", "adaptive-threshold"):
        return 4 + min(8 * n, (n + 7) // 8 + 4 * n)
    if m == "terngrad":
        return 4 + (n + 3) // 4
    if m == "qsgd":
        s = o["levels"]
        bucket = o["bucket"] or n
        bits = math.ceil(math.log2(s + 1))
        return 4 * math.ceil(n / bucket) + (n * bits + 7) // 8 + (n + 7) // 8
    raise SystemExit(f"comm_payload.py: unknown method {spec}")


def fixed(spec):
    return parse(spec)["method"] not in ("thresholdv", "adaptive-threshold")


def rules_of(spec):
    """[(glob, method)] of a per-parameter rule spec 'GLOB=METHOD,...', or
    None for a plain method (an item with '=' before any ':' is a rule, as
    in qsgd:255:bucket=64 the ':' comes first)."""
    items = [i.strip() for i in spec.split(",") if i.strip()]
    rules = []
    for item in items:
        eq, colon = item.find("="), item.find(":")
        if eq < 0 or (0 <= colon < eq):
            if len(items) > 1:
                raise SystemExit(f"comm_payload.py: '{item}': with several "
                                 "items each must be a rule 'glob=method'")
            return None
        rules.append((item[:eq].strip(), item[eq + 1:].strip()))
    return rules


def entities(params, spec, scope):
    """[(method, numel)] of the payloads one rank sends per step."""
    rules = rules_of(spec)
    if rules is not None:
        if scope == "entire-model":
            raise SystemExit("comm_payload.py: per-parameter rules need "
                             "--scope layerwise")
        out = []
        for name, n in params:
            m = next((m for g, m in rules if fnmatch.fnmatchcase(name, g)),
                     "none")
            out.append((m, n))
        return out
    if scope == "entire-model" and spec != "none":
        return [(spec, sum(n for _, n in params))]
    return [(spec, n) for _, n in params]


def bytes_per_step(params, spec, scope):
    return sum(capacity(m, n) for m, n in entities(params, spec, scope))


def bytes_range(params, spec, scope, ranks):
    """(lo, hi) bytes per step and rank: exact for fixed-size methods; a
    threshold payload sends its 8-byte length (on several ranks) and then
    from 4 bytes (count 0) up to its capacity."""
    lo = hi = 0
    length = 8 if ranks > 1 else 0
    for m, n in entities(params, spec, scope):
        if fixed(m):
            lo += capacity(m, n)
            hi += capacity(m, n)
        else:
            lo += length + 4
            hi += length + capacity(m, n)
    return lo, hi


def check(args):
    params = params_of(args.model)
    dense = 4 * sum(n for _, n in params)
    want = bytes_per_step(params, args.method, args.scope)
    lo, hi = bytes_range(params, args.method, args.scope, args.ranks)
    exact = lo == hi
    lines = [json.loads(l) for l in open(args.metrics) if l.strip()]
    if not lines:
        sys.exit(f"{args.metrics}: no epochs")
    ok = True
    for r in lines:
        if r.get("ranks") != args.ranks:
            print(f"epoch {r['epoch']}: ranks {r.get('ranks')} != {args.ranks}")
            ok = False
            continue
        got = r["comm_bytes_per_step_by_rank"]
        if r["dense_fp32_bytes_per_step"] != dense:
            print(f"epoch {r['epoch']}: dense bytes {r['dense_fp32_bytes_per_step']} != {dense}")
            ok = False
        if len(got) != args.ranks:
            print(f"epoch {r['epoch']}: {len(got)} ranks report bytes")
            ok = False
        for rank, b in enumerate(got):
            if exact:
                good = b == want
            else:  # data-dependent: lengths exchanged (8 bytes per entity)
                good = lo <= b <= hi and b < dense
            if not good:
                print(f"epoch {r['epoch']} rank {rank}: {b} bytes/step, "
                      f"analytic {want} ({'exact' if exact else f'range {lo}..{hi}'})")
                ok = False
    last = lines[-1]
    print(f"{args.method} ({args.scope}) on {args.ranks} ranks: "
          f"{last['comm_bytes_per_step_by_rank']} bytes/step per rank, analytic "
          f"{want if exact else f'{lo}..{hi}'}, dense fp32 {dense} (ratio {dense / max(last['comm_bytes_per_step'], 1):.2f}x); "
          f"test acc {last['test_acc']:.4f}")
    if args.min_test_acc is not None and last["test_acc"] < args.min_test_acc:
        print(f"test accuracy {last['test_acc']:.4f} < {args.min_test_acc}")
        ok = False
    sys.exit(0 if ok else 1)


METHODS = ["none", "fp16", "bf16", "randomk:0.01", "topk:0.01",
           "thresholdv:0.001", "adaptive-threshold", "terngrad", "qsgd:255",
           "qsgd:15:bucket=512"]


def table(args):
    for path in args.models:
        params = params_of(path)
        dense = 4 * sum(n for _, n in params)
        print(f"{path}: {len(params)} gradient tensors, {dense / 4:.0f} "
              f"elements, dense fp32 {dense / 1e6:.3f} MB/step")
        print(f"| method | scope | MB/step per rank | vs fp32 | vs fp16 |")
        print(f"|---|---|---|---|---|")
        for spec in METHODS:
            for scope in ("layerwise", "entire-model"):
                b = bytes_per_step(params, spec, scope)
                note = "" if fixed(spec) else " (max)"
                print(f"| {spec} | {scope} | {b / 1e6:.4f}{note} | "
                      f"{dense / b:.2f}x | {dense / 2 / b:.2f}x |")
        print()


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("metrics")
    c.add_argument("--model", required=True)
    c.add_argument("--method", required=True)
    c.add_argument("--scope", default="layerwise")
    c.add_argument("--ranks", type=int, default=2)
    c.add_argument("--min-test-acc", type=float)
    t = sub.add_parser("table")
    t.add_argument("models", nargs="+")
    args = ap.parse_args()
    check(args) if args.cmd == "check" else table(args)


if __name__ == "__main__":
    main()
