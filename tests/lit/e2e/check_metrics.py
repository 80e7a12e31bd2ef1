#!/usr/bin/env python3
"""Checks a trainer's --metrics file (JSON lines, one object per epoch).

  check_metrics.py learns FILE --epochs N --min-test-acc A
      N epochs recorded with all keys; the training loss of the last epoch is
      below that of the first; the final test accuracy is at least A.
  check_metrics.py same FILE1 FILE2
      identical records apart from the wall-clock fields (determinism).
  check_metrics.py close REF OTHER --first-rel R1 --rel R
      the training loss of OTHER tracks REF epoch by epoch: relative
      difference at most R1 in the first epoch and R in every epoch.
"""
import argparse
import json
import math
import sys

KEYS = ["run", "epoch", "lr", "train_loss", "train_acc", "test_loss",
        "test_acc", "epoch_time_s", "total_time_s"]
TIMES = {"epoch_time_s", "eval_time_s", "total_time_s", "images_per_s"}


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def learns(args):
    rows = load(args.file)
    if len(rows) != args.epochs:
        sys.exit(f"expected {args.epochs} epochs, found {len(rows)}")
    for r in rows:
        missing = [k for k in KEYS if k not in r]
        if missing:
            sys.exit(f"epoch {r.get('epoch')}: missing keys {missing}")
        if not all(math.isfinite(r[k]) for k in KEYS):
            sys.exit(f"epoch {r['epoch']}: non-finite value in {r}")
    first, last = rows[0], rows[-1]
    print(f"train loss {first['train_loss']:.4f} -> {last['train_loss']:.4f}, "
          f"test acc {first['test_acc']:.4f} -> {last['test_acc']:.4f}")
    if not last["train_loss"] < first["train_loss"]:
        sys.exit("the training loss did not fall")
    if last["test_acc"] < args.min_test_acc:
        sys.exit(f"final test accuracy {last['test_acc']:.4f} is below "
                 f"{args.min_test_acc}")


def same(args):
    a, b = load(args.file), load(args.other)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMES}
                          for r in rows]
    if not a or strip(a) != strip(b):
        sys.exit(f"runs differ:\n{strip(a)}\n{strip(b)}")
    print(f"{len(a)} epochs identical")


def close(args):
    ref, other = load(args.file), load(args.other)
    if len(ref) != len(other) or not ref:
        sys.exit(f"epoch counts differ: {len(ref)} vs {len(other)}")
    worst = 0.0
    for k, (a, b) in enumerate(zip(ref, other)):
        rel = abs(b["train_loss"] - a["train_loss"]) / abs(a["train_loss"])
        limit = args.first_rel if k == 0 else args.rel
        print(f"epoch {a['epoch']}: train loss {a['train_loss']:.5f} vs "
              f"{b['train_loss']:.5f}, relative difference {rel:.4f} "
              f"(limit {limit})")
        worst = max(worst, rel)
        if rel > limit:
            sys.exit(f"epoch {a['epoch']}: relative difference {rel:.4f} "
                     f"exceeds {limit}")
    print(f"max relative difference {worst:.4f}")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    l = sub.add_parser("learns")
    l.add_argument("file")
    l.add_argument("--epochs", type=int, required=True)
    l.add_argument("--min-test-acc", type=float, required=True)
    s = sub.add_parser("same")
    s.add_argument("file")
    s.add_argument("other")
    c = sub.add_parser("close")
    c.add_argument("file")
    c.add_argument("other")
    c.add_argument("--first-rel", type=float, required=True)
    c.add_argument("--rel", type=float, required=True)
    args = p.parse_args()
    {"learns": learns, "same": same, "close": close}[args.cmd](args)


if __name__ == "__main__":
    main()
