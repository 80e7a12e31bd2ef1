#!/usr/bin/env python3
"""Whole models against an independent runtime.

For each zoo model (full width and narrow variants) this builds the ONNX file
with `fcc-models --with-weights`, gives the BatchNorm layers non-trivial
statistics (so inference-mode BN is not the identity), evaluates a random
batch with `fcc run` (fcc's importer + CPU kernels) and with onnxruntime (CPU),
and compares the logits. It also checks the graph-only path: `fcc run` on the
graph-only model initialises the parameters itself with --seed, which must
give exactly the weights `fcc-models --with-weights --seed` embeds.

Usage: zoo_vs_onnxruntime.py BIN_DIR
"""
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
except ImportError as e:  # install-deps installs them
    sys.exit(f"zoo_vs_onnxruntime: missing Python package ({e}); run scripts/install-deps")

RTOL = 1e-4  # relative to the largest |logit| of the reference

CASES = [
    # name, width multiplier, input CxHxW
    ("resnet9", 1.0, "3x32x32"),
    ("resnet9", 0.125, "3x32x32"),
    ("resnet9-bot", 0.125, "3x32x32"),
    ("resnet9", 0.25, "1x28x28"),
    ("alexnet", 1.0, "3x32x32"),
    ("alexnet", 0.125, "3x32x32"),
    ("alexnet", 0.25, "1x28x28"),
]


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr}")
    return r.stdout


def randomize_batchnorm(model, rng):
    """Non-trivial BN statistics and affine parameters in the initializers."""
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t).copy()
        if t.name.endswith("running_mean") or t.name.endswith("bn.bias"):
            a = (0.1 * rng.standard_normal(a.shape)).astype(np.float32)
        elif t.name.endswith("running_var") or t.name.endswith("bn.weight"):
            a = rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
        else:
            continue
        t.CopyFrom(numpy_helper.from_array(a, t.name))


def main():
    bin_dir = sys.argv[1]
    fcc, zoo = os.path.join(bin_dir, "fcc"), os.path.join(bin_dir, "fcc-models")
    failures = 0
    print(f"{'model':<12} {'width':>5} {'input':>8} {'params':>10} {'max|ref|':>9} {'max err':>9} {'rel err':>9}  graph-only")
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, width, shape) in enumerate(CASES):
            seed = 11 + k
            rng = np.random.default_rng(seed)
            weighted = os.path.join(tmp, f"{name}-{k}.onnx")
            graph_only = os.path.join(tmp, f"{name}-{k}-graph.onnx")
            common = [name, "--width-mult", str(width), "--input", shape]
            run([zoo, *common, "--with-weights", "--seed", str(seed), "-o", weighted])
            run([zoo, *common, "-o", graph_only])

            c, h, w = (int(v) for v in shape.split("x"))
            x = rng.standard_normal((2, c, h, w)).astype(np.float32)
            x_pb = os.path.join(tmp, f"x-{k}.pb")
            with open(x_pb, "wb") as f:
                f.write(numpy_helper.from_array(x, "input").SerializeToString())

            # 1. Embedded weights (with randomised BN) vs onnxruntime.
            model = onnx.load(weighted)
            randomize_batchnorm(model, rng)
            onnx.save(model, weighted)
            n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
            ref = ort.InferenceSession(weighted, providers=["CPUExecutionProvider"]).run(
                None, {"input": x})[0]
            out_dir = os.path.join(tmp, f"out-{k}")
            run([fcc, "run", weighted, "--input", f"input={x_pb}", "--output-dir", out_dir])
            got = numpy_helper.to_array(onnx.load_tensor(os.path.join(out_dir, "output_0.pb")))
            scale = float(np.abs(ref).max())
            err = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
            ok = err <= RTOL * scale + 1e-7

            # 2. Graph-only model, parameters initialised by fcc with the same seed,
            #    vs onnxruntime on the embedded (un-randomised) weights.
            run([zoo, *common, "--with-weights", "--seed", str(seed), "-o", weighted + ".plain"])
            ref2 = ort.InferenceSession(weighted + ".plain", providers=["CPUExecutionProvider"]).run(
                None, {"input": x})[0]
            out2 = os.path.join(tmp, f"out2-{k}")
            run([fcc, "run", graph_only, "--seed", str(seed), "--input", f"input={x_pb}",
                 "--output-dir", out2])
            got2 = numpy_helper.to_array(onnx.load_tensor(os.path.join(out2, "output_0.pb")))
            err2 = float(np.abs(got2 - ref2).max())
            ok2 = err2 <= RTOL * float(np.abs(ref2).max()) + 1e-7

            print(f"{name:<12} {width:>5} {shape:>8} {n_params:>10} {scale:>9.3g} {err:>9.2e} "
                  f"{err / max(scale, 1e-30):>9.2e}  {'ok' if ok2 else f'FAIL ({err2:.2e})'}"
                  + ("" if ok else "   <-- FAIL"))
            failures += (not ok) + (not ok2)
    print(f"zoo-vs-onnxruntime: {len(CASES) * 2 - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
