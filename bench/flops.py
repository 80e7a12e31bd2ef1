#!/usr/bin/env python3
"""FLOPs of one ResNet9 training step, achieved TFLOP/s, and GPU peaks.

Convention (the usual one for training throughput, e.g. in MLPerf and
scaling-law papers):
  - only convolutions and linear layers count; BatchNorm, activations,
    pooling, the residual adds, the loss and the optimizer are left out
    (they are memory-bound and below 1% of the arithmetic of ResNet9);
  - a multiply-accumulate is 2 FLOPs: forward FLOPs = 2 x MACs;
  - a training step costs 3 x forward: the forward pass, the gradient with
    respect to the input and the gradient with respect to the weights, each
    as many MACs as the forward. fcc skips the input gradient of the first
    convolution (its input is the image); `exact` below subtracts it, the
    headline number does not (0.16% of ResNet9's step);
  - evaluation (and TTA, a second forward of the flipped batch) is not part of
    training FLOPs; eval_flops_per_image gives it separately.

ResNet9 (cifar10-fast, 32x32 input, width x1), forward MACs per image:
  prep    conv  3->64   at 32x32:  1,769,472
  layer1  conv 64->128  at 32x32: 75,497,472   (both variants convolve before pooling)
  layer1  res1, res2 128->128 at 16x16: 2 x 37,748,736
  layer2  conv 128->256 at 16x16: 75,497,472
  layer3  conv 256->512 at 8x8:   75,497,472
  layer3  res1, res2 512->512 at 4x4:   2 x 37,748,736
  fc      512->10:                5,120
  total   379,261,952 MACs = 0.7585 GFLOP forward, 2.2756 GFLOP per trained
          image, 1.1651 TFLOP per step of 512 images.
resnet9-bot has the same convolutions and FLOPs (it pools before the
BatchNorm, which changes no convolution's size).

Usage:
  python3 bench/flops.py                              # the table above
  python3 bench/flops.py --images-per-s 25000 --gpu "NVIDIA H100 80GB HBM3"
  python3 bench/flops.py --onnx models/resnet9.onnx  # count from the ONNX graph
As a module: train_flops_per_image(), achieved_tflops(), peak_tflops(name).
"""

import argparse
import math
import subprocess
import sys

# Dense (no sparsity) fp16/bf16 tensor-core peaks with fp32 accumulation, in
# TFLOP/s, from NVIDIA's data sheets; matched against the device name in
# order (the first pattern contained in the lower-cased name wins).
GPU_PEAKS = [
    ("gb200", 2500.0),
    ("b200", 2250.0),
    ("h200", 989.4),       # same SXM compute as the H100 SXM
    ("gh200", 989.4),
    ("h100 nvl", 835.0),
    ("h100 pcie", 756.0),
    ("h100", 989.4),       # H100 SXM ("NVIDIA H100 80GB HBM3")
    ("h800", 989.4),
    ("a100", 312.0),
    ("a800", 312.0),
    ("l40s", 362.0),
    ("l40", 181.0),
    ("l4", 121.0),
    ("a10g", 70.0),
    ("a10", 125.0),
    ("rtx 4090", 165.2),
    ("rtx 3090", 71.0),
    ("v100", 125.0),
    ("t4", 65.0),
]


def peak_tflops(name):
    """(pattern, dense fp16 TFLOP/s) for a GPU name, or (None, None)."""
    low = (name or "").lower()
    for pattern, peak in GPU_PEAKS:
        if pattern in low:
            return pattern, peak
    return None, None


def gpu_name():
    """The first GPU's name from nvidia-smi, else torch, else None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name",
                              "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - torch missing or broken: no name
        pass
    return None


def scale_width(channels, mult):
    return max(1, int(math.floor(channels * mult + 0.5)))  # llround


def resnet9_layers(width_mult=1.0, height=32, width=32, in_channels=3, classes=10):
    """[(name, MACs per image)] of ResNet9's convolutions and linear layer,
    following models/ModelZoo.cpp (3x3 convs with pad 1, pools of 2, global
    max pool, linear without bias)."""
    w = [scale_width(c, width_mult) for c in (64, 128, 256, 512)]
    layers = []
    h, wd, c = height, width, in_channels

    def conv(name, cout):
        nonlocal c
        layers.append((name, h * wd * cout * c * 9))
        c = cout

    def pool():
        nonlocal h, wd
        h, wd = h // 2, wd // 2

    conv("prep.conv", w[0])
    conv("layer1.conv", w[1])
    pool()
    conv("layer1.res1.conv", w[1])
    conv("layer1.res2.conv", w[1])
    conv("layer2.conv", w[2])
    pool()
    conv("layer3.conv", w[3])
    pool()
    conv("layer3.res1.conv", w[3])
    conv("layer3.res2.conv", w[3])
    layers.append(("fc", c * classes))
    return layers


def onnx_layers(path, batch=1):
    """[(name, MACs per image)] of the Conv and Gemm/MatMul nodes of an ONNX
    model, from ONNX shape inference (needs the onnx package)."""
    import onnx
    from onnx import shape_inference
    model = onnx.load(path)
    g = model.graph
    for inp in g.input:  # fix a symbolic batch dimension
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    model = shape_inference.infer_shapes(model)
    shapes = {}
    for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        shapes[v.name] = [d.dim_value for d in v.type.tensor_type.shape.dim]
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    layers = []
    for n in model.graph.node:
        if n.op_type == "Conv":
            out, wshape = shapes.get(n.output[0]), shapes.get(n.input[1])
            if not out or not wshape:
                raise ValueError(f"{path}: no shape for Conv '{n.name}'")
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            del group  # the weight is already [K, C/group, kh, kw]
            macs = int(math.prod(out[1:])) * int(math.prod(wshape[1:]))
            layers.append((n.name or n.output[0], macs))
        elif n.op_type in ("Gemm", "MatMul"):
            a, out = shapes.get(n.input[0]), shapes.get(n.output[0])
            if not a or not out:
                raise ValueError(f"{path}: no shape for {n.op_type} '{n.name}'")
            trans_a = next((a_.i for a_ in n.attribute if a_.name == "transA"), 0)
            k = a[0] if (n.op_type == "Gemm" and trans_a) else a[-1]
            layers.append((n.name or n.output[0], int(out[-1]) * int(k)))
    return layers


def forward_macs(layers):
    return sum(m for _, m in layers)


def train_flops_per_image(layers=None, exact=False):
    """Training FLOPs per image: 3 x 2 x MACs (see the module docstring);
    exact=True leaves out the first layer's input gradient, as fcc does."""
    layers = layers if layers is not None else resnet9_layers()
    f = 6 * forward_macs(layers)
    if exact and layers:
        f -= 2 * layers[0][1]
    return f


def eval_flops_per_image(layers=None, tta=False):
    layers = layers if layers is not None else resnet9_layers()
    return 2 * forward_macs(layers) * (2 if tta else 1)


def achieved_tflops(images_per_s, layers=None):
    return images_per_s * train_flops_per_image(layers) / 1e12


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--onnx", help="count the Conv/Gemm/MatMul nodes of this "
                   "ONNX model instead (needs the onnx package)")
    p.add_argument("--images-per-s", type=float,
                   help="training throughput to convert into TFLOP/s")
    p.add_argument("--gpu", help="GPU name for the peak (default: nvidia-smi)")
    p.add_argument("--quiet", action="store_true", help="no per-layer table")
    a = p.parse_args(argv)

    layers = onnx_layers(a.onnx) if a.onnx else resnet9_layers(a.width_mult)
    macs = forward_macs(layers)
    if not a.quiet:
        w = max(len(n) for n, _ in layers)
        print(f"{'layer':<{w}}  {'MACs/image':>14}")
        for n, m in layers:
            print(f"{n:<{w}}  {m:>14,}")
        print(f"{'total':<{w}}  {macs:>14,}")
    tf = train_flops_per_image(layers)
    print(f"forward   {2 * macs / 1e9:.4f} GFLOP per image (2 x {macs:,} MACs)")
    print(f"training  {tf / 1e9:.4f} GFLOP per image (3 x forward; "
          f"{train_flops_per_image(layers, exact=True) / 1e9:.4f} without the "
          f"first layer's input gradient), {tf * a.batch / 1e12:.4f} TFLOP per "
          f"step of {a.batch}")
    name = a.gpu if a.gpu is not None else (gpu_name() if a.images_per_s else None)
    pattern, peak = peak_tflops(name)
    if name:
        print(f"gpu       {name}: " + (f"dense fp16 peak {peak:g} TFLOP/s "
                                       f"(matched '{pattern}')" if peak
                                       else "no peak known for this name"))
    if a.images_per_s:
        t = achieved_tflops(a.images_per_s, layers)
        line = f"achieved  {t:.2f} TFLOP/s at {a.images_per_s:,.0f} images/s"
        if peak:
            line += f" = {100 * t / peak:.2f}% of the dense fp16 peak"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
