#!/usr/bin/env python3
"""bench/ncu_summary.py - time per kernel of an Nsight Compute CSV log.

Reads the log of
    ncu --metrics gpu__time_duration.sum --csv --page raw --print-units base \
        --log-file LOG PROGRAM ...
(one row per profiled kernel launch) and prints the kernels' durations summed
by kernel name, largest first, with their share and launch count. The
profiler serialises the kernels, so the total is the step's kernel time
without overlap or launch gaps (a lower bound of the step time in a graph).

Usage: ncu_summary.py LOG [--top N]
"""
import argparse
import collections
import csv
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("log")
    ap.add_argument("--top", type=int, default=60)
    a = ap.parse_args()
    try:
        lines = [l for l in open(a.log, errors="replace") if l.startswith('"')]
    except OSError as e:
        sys.exit(f"ncu_summary: {e}")
    total = collections.defaultdict(float)
    count = collections.Counter()
    scale = {"ns": 1.0, "nsecond": 1.0, "us": 1e3, "usecond": 1e3,
             "ms": 1e6, "msecond": 1e6, "s": 1e9, "second": 1e9}
    for row in csv.DictReader(lines):
        # --page raw: one column per metric (a units row first); --page
        # details: one row per metric ("Metric Name", "Metric Value").
        if "Metric Name" in row:
            if row["Metric Name"] not in ("gpu__time_duration.sum", "Duration"):
                continue
            value, unit = row.get("Metric Value", ""), row.get("Metric Unit", "ns")
        else:
            value, unit = row.get("gpu__time_duration.sum", ""), "ns"
        try:
            ns = float(value.replace(",", "")) * scale.get(unit.strip(), 1.0)
        except ValueError:
            continue  # the units row, or a kernel without the metric
        name = row.get("Kernel Name", "?").split("(")[0].strip()[:100]
        total[name] += ns
        count[name] += 1
    if not total:
        sys.exit(f"ncu_summary: no kernel rows with gpu__time_duration.sum in {a.log}")
    all_ns = sum(total.values())
    print(f"{sum(count.values())} kernel launches, {all_ns / 1e3:.1f} us of kernel "
          f"time (serialised by the profiler)")
    print(f"{'us':>10} {'%':>6} {'n':>5}  kernel")
    for name, ns in sorted(total.items(), key=lambda kv: -kv[1])[: a.top]:
        print(f"{ns / 1e3:10.1f} {100 * ns / all_ns:6.1f} {count[name]:5d}  {name}")


if __name__ == "__main__":
    main()
