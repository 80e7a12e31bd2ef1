#!/usr/bin/env python3
"""Compares a model restored from a delta checkpoint with the live model.

  check_delta.py METRICS EPOCH EVAL_OUT DELTA FULL --max-acc-diff A
                 --max-size-ratio R [--exact]

METRICS is the live run's --metrics file; EPOCH the epoch after which the
delta was written (its state is the one the live run evaluated then);
EVAL_OUT the output of `TRAINER --restore-delta DELTA --eval-only`; FULL a
full checkpoint of the same run. Checks that the restored test accuracy is
within A of the live one (--exact: the same accuracy, and the test loss to
the 4 printed decimals) and that DELTA is at most R times the size of FULL.
Prints one line; exits 1 when a check fails.
"""
import argparse
import json
import os
import re
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("metrics")
    ap.add_argument("epoch", type=int)
    ap.add_argument("eval_out")
    ap.add_argument("delta")
    ap.add_argument("full")
    ap.add_argument("--max-acc-diff", type=float, required=True)
    ap.add_argument("--max-size-ratio", type=float, required=True)
    ap.add_argument("--exact", action="store_true")
    a = ap.parse_args()
    with open(a.metrics) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    live = [r for r in rows if r["epoch"] == a.epoch]
    if len(live) != 1:
        sys.exit(f"no epoch {a.epoch} in {a.metrics}")
    live = live[0]
    with open(a.eval_out) as f:
        text = f.read()
    m = re.search(r"test loss ([0-9.]+), test acc ([0-9.]+) \((\d+) of (\d+) "
                  r"images\)", text)
    if not m:
        sys.exit(f"no accuracy in {a.eval_out}:\n{text}")
    loss, acc = float(m.group(1)), float(m.group(2))
    size, full = os.path.getsize(a.delta), os.path.getsize(a.full)
    ratio = size / full
    diff = abs(acc - live["test_acc"])
    ok_acc = diff <= a.max_acc_diff + 1e-9
    if a.exact:
        ok_acc = (round(acc * 1e4) == round(live["test_acc"] * 1e4)
                  and abs(loss - live["test_loss"]) <= 0.5e-4 + 1e-9)
    ok_size = ratio <= a.max_size_ratio
    print(f"delta {size} bytes = {100 * ratio:.2f}% of the full checkpoint "
          f"({full} bytes; at most {100 * a.max_size_ratio:g}%: "
          f"{'ok' if ok_size else 'FAIL'}); test acc live "
          f"{live['test_acc']:.4f} (loss {live['test_loss']:.4f}), restored "
          f"{acc:.4f} (loss {loss:.4f}): "
          + ("identical" if a.exact and ok_acc else
             f"diff {diff:.4f} (at most {a.max_acc_diff:g})"
             if ok_acc else "FAIL"))
    sys.exit(0 if ok_acc and ok_size else 1)


if __name__ == "__main__":
    main()
