#!/usr/bin/env python3
"""same_epochs.py A.jsonl B.jsonl: whether two trainers' --metrics files
record the same training, epoch for epoch (run, epoch, train_loss, test_acc
equal bit for bit). bench/gpu-check.sh uses it on the runs of one trainer
with and without FCC_CUDA_SERIAL=1: the same kernels on the same data, so a
difference means a race between the streams in the captured graph.
Prints a one-line verdict; exit status 0 when equal, 1 when not, 2 on bad
input."""
import json
import sys


def epochs(path):
    rows = []
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                rows.append((r["run"], r["epoch"], r["train_loss"], r["test_acc"]))
            except (ValueError, KeyError) as e:
                print(f"{path}:{n}: not a metrics record ({e})")
                sys.exit(2)
    return rows


def main():
    if len(sys.argv) != 3:
        print("usage: same_epochs.py A.jsonl B.jsonl")
        return 2
    a, b = epochs(sys.argv[1]), epochs(sys.argv[2])
    if not a:
        print(f"{sys.argv[1]}: no epochs")
        return 2
    differ = [(x, y) for x, y in zip(a, b) if x != y]
    if len(a) != len(b):
        print(f"{len(a)} epochs against {len(b)}")
        return 1
    if differ:
        x, y = differ[0]
        print(f"{len(differ)} of {len(a)} epochs differ; first: run {x[0]} "
              f"epoch {x[1]}: loss {x[2]!r} vs {y[2]!r}, accuracy {x[3]!r} vs {y[3]!r}")
        return 1
    print(f"all {len(a)} epochs equal (loss and accuracy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
