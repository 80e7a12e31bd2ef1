#!/usr/bin/env python3
"""Throughput of fcc's CPU trainers, side by side in one run.

For each model (zoo model x width multiplier) and batch size: build the ONNX
file (fcc-models), compile it (fcc compile --target cpu, timed), train one
epoch on the first --images training images of DATA and read images/s from
the trainer's --metrics output. Prints one table row per configuration:

  model, width, params, batch, compile s, source KiB, arena MiB, images/s

Usage: bench/cpu_trainer.py [--bin build/bin] [--data tests/data/cifar10-mini]
                            [--images 1000] [--threads 0]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

CONFIGS = [  # (zoo model, width multiplier, batch)
    ("resnet9", 0.125, 64),
    ("resnet9", 0.25, 64),
    ("resnet9", 1.0, 64),
    ("resnet9-bot", 0.125, 64),
    ("alexnet", 0.25, 64),
    ("alexnet", 1.0, 64),
]


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    return proc


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="build/bin")
    p.add_argument("--data", default="tests/data/cifar10-mini")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--only", default="", help="substring filter on model")
    a = p.parse_args()
    fcc = os.path.join(a.bin, "fcc")
    models = os.path.join(a.bin, "fcc-models")
    print(f"CPU trainers, fp32, {a.images} images of {a.data}, threads "
          f"{a.threads or 'all'} ({os.cpu_count()} cores)")
    print(f"{'model':12} {'width':>6} {'params':>10} {'batch':>6} "
          f"{'compile s':>10} {'source KiB':>11} {'arena MiB':>10} "
          f"{'images/s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, width, batch in CONFIGS:
            if a.only not in name:
                continue
            onnx = os.path.join(tmp, f"{name}-{width}.onnx")
            out = run([models, name, "--width-mult", str(width), "-o", onnx])
            params = re.search(r"(\d+) trainable parameters",
                               out.stderr + out.stdout).group(1)
            exe = os.path.join(tmp, f"{name}-{width}")
            src = os.path.join(tmp, f"src-{name}-{width}")
            t0 = time.perf_counter()
            out = run([fcc, "compile", onnx, "--target", "cpu", "--batch",
                       str(batch), "-o", exe, "--keep-source", src])
            compile_s = time.perf_counter() - t0
            arena = re.search(r"arena (\d+) MiB", out.stderr).group(1)
            size = os.path.getsize(os.path.join(src, "trainer.cpp")) / 1024
            metrics = os.path.join(tmp, "m.jsonl")
            run([exe, "--data", a.data, "--epochs", "1", "--train-limit",
                 str(a.images), "--test-limit", str(batch), "--threads",
                 str(a.threads), "--metrics", metrics, "--quiet"])
            with open(metrics) as f:
                ips = json.loads(f.readline())["images_per_s"]
            print(f"{name:12} {width:>6} {params:>10} {batch:>6} "
                  f"{compile_s:>10.2f} {size:>11.1f} {arena:>10} "
                  f"{ips:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
