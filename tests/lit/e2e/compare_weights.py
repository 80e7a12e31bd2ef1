#!/usr/bin/env python3
"""compare_weights.py A.onnx B.onnx [--rtol R]: the initializers of two
exported models (trainer --export-onnx) agree per tensor within R relative
to the tensor's largest magnitude; prints the worst tensor either way."""
import argparse
import sys

import numpy as np
import onnx
from onnx import numpy_helper

ap = argparse.ArgumentParser()
ap.add_argument("a")
ap.add_argument("b")
ap.add_argument("--rtol", type=float, default=1e-5)
args = ap.parse_args()
ta = {t.name: numpy_helper.to_array(t) for t in onnx.load(args.a).graph.initializer}
tb = {t.name: numpy_helper.to_array(t) for t in onnx.load(args.b).graph.initializer}
if set(ta) != set(tb) or not ta:
    sys.exit(f"different tensors: {sorted(set(ta) ^ set(tb))}")
worst, name = 0.0, ""
for k in ta:
    a, b = ta[k].astype(np.float64), tb[k].astype(np.float64)
    scale = max(np.abs(b).max(), 1e-30)
    err = np.abs(a - b).max() / scale
    if err > worst:
        worst, name = err, k
print(f"{len(ta)} tensors; worst relative difference {worst:.3g} ({name})")
sys.exit(0 if worst <= args.rtol else 1)
