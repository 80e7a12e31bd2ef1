#!/usr/bin/env python3
"""One training step of fcc against a float64 numpy reference.

A linear classifier (Flatten + Gemm with a bias) is written as ONNX with
random initial weights; `fcc run --stage training --function train_step`
evaluates one step of the training program fcc derives from it (the same IR
the trainer's code is generated from) with given momentum buffers and
hyper-parameters. The expected values are computed here from the textbook
definitions, independently of fcc:

  q        = (1 - ls) * onehot(label) + ls / C           (label smoothing)
  loss     = mean_i  -sum_j q_ij log softmax(x_i W^T + b)_j
  dlogits  = (softmax - q) / N,  dW = dlogits^T x,  db = sum_i dlogits_i
  g        = grad + wd * wd_mult * p                     (L2 added to the grad)
  buf      = momentum * buf + g                          (PyTorch SGD)
  step     = g + momentum * buf  if nesterov else buf
  p        = p - lr * lr_mult * step

Weights use multipliers 1, the bias the bias group's (--bias-lr-mult,
--bias-wd-mult), as in cifar10-fast's bag of tricks. Two cases: Nesterov with
label smoothing, classical momentum without.

Usage: optimizer_step.py BIN_DIR
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

N, C, H, W, CLASSES = 5, 2, 2, 3, 4
D = C * H * W


def make_model(path, weight, bias):
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"],
                          transB=1)],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [N, C, H, W])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                       [N, CLASSES])],
        [numpy_helper.from_array(weight, "fc.weight"),
         numpy_helper.from_array(bias, "fc.bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def save(path, array):
    with open(path, "wb") as f:
        f.write(numpy_helper.from_array(array).SerializeToString())


def reference(x, labels, w, b, buf_w, buf_b, hp, lr_mult, wd_mult):
    x = x.reshape(N, D).astype(np.float64)
    w64, b64 = w.astype(np.float64), b.astype(np.float64)
    logits = x @ w64.T + b64
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    q = np.full((N, CLASSES), hp["label_smoothing"] / CLASSES)
    q[np.arange(N), labels] += 1.0 - hp["label_smoothing"]
    loss = -(q * logp).sum(axis=1).mean()
    correct = float((logits.argmax(axis=1) == labels).sum())
    dlogits = (np.exp(logp) - q) / N
    grads = {"w": dlogits.T @ x, "b": dlogits.sum(axis=0)}

    def sgd(p, g, buf, lm, wm):
        g = g + hp["weight_decay"] * wm * p
        buf = hp["momentum"] * buf + g
        step = g + hp["momentum"] * buf if hp["nesterov"] else buf
        return p - hp["lr"] * lm * step, buf

    new_w, new_bw = sgd(w64, grads["w"], buf_w.astype(np.float64), 1.0, 1.0)
    new_b, new_bb = sgd(b64, grads["b"], buf_b.astype(np.float64), lr_mult,
                        wd_mult)
    return {"new:fc.weight": new_w, "new:momentum:fc.weight": new_bw,
            "new:fc.bias": new_b, "new:momentum:fc.bias": new_bb,
            "loss": loss, "correct": correct}


def parse_printed(text):
    """Names of the outputs in the order `fcc run` prints them."""
    names = []
    for line in text.splitlines():
        if ":" in line and not line.startswith(("[", " ")):
            names.append(line.rsplit(":", 1)[0].strip())
    return names


def run_case(bin_dir, tmp, name, hp, lr_mult, wd_mult, rng):
    w = rng.uniform(-0.5, 0.5, (CLASSES, D)).astype(np.float32)
    b = rng.uniform(-0.5, 0.5, (CLASSES,)).astype(np.float32)
    x = rng.uniform(-1, 1, (N, C, H, W)).astype(np.float32)
    labels = rng.integers(0, CLASSES, N).astype(np.int32)
    buf_w = rng.uniform(-0.1, 0.1, w.shape).astype(np.float32)
    buf_b = rng.uniform(-0.1, 0.1, b.shape).astype(np.float32)
    case = os.path.join(tmp, name)
    os.makedirs(case)
    model = os.path.join(case, "model.onnx")
    make_model(model, w, b)
    inputs = {"input": x, "labels": labels, "momentum:fc.weight": buf_w,
              "momentum:fc.bias": buf_b}
    for k, v in hp.items():
        inputs[k] = np.array(v, dtype=np.int64 if k == "seed" else np.float32)
    args = [os.path.join(bin_dir, "fcc"), "run", model, "--stage", "training",
            "--function", "train_step", "--output-dir",
            os.path.join(case, "out"), "--print-limit", "1",
            "--bias-lr-mult", repr(lr_mult), "--bias-wd-mult", repr(wd_mult)]
    for k, v in inputs.items():
        path = os.path.join(case, k.replace(":", "_") + ".pb")
        save(path, v)
        args += ["--input", f"{k}={path}"]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr)
        raise SystemExit(f"{name}: fcc run failed")
    names = parse_printed(proc.stdout)
    expected = reference(x, labels, w, b, buf_w, buf_b, hp, lr_mult, wd_mult)
    failures = 0
    for k, out_name in enumerate(names):
        path = os.path.join(case, "out", f"output_{k}.pb")
        got = numpy_helper.to_array(onnx.load_tensor(path)).astype(np.float64)
        key = out_name.split(" ")[0]
        if key not in expected:
            continue
        want = np.asarray(expected.pop(key), dtype=np.float64)
        err = np.max(np.abs(got - want) / (np.abs(want) + 1e-3))
        ok = err < 1e-5
        failures += not ok
        print(f"  {name:28s} {key:26s} max rel err {err:.2e}"
              f"{'' if ok else '  <-- FAIL'}")
    if expected:
        print(f"  {name}: outputs missing from fcc run: {sorted(expected)}")
        failures += len(expected)
    return failures


def main():
    bin_dir = sys.argv[1]
    rng = np.random.default_rng(20261130)
    cases = [
        ("nesterov+label-smoothing",
         dict(lr=0.4, momentum=0.9, weight_decay=5e-4, nesterov=1.0,
              label_smoothing=0.2, loss_scale=1.0, seed=7), 64.0, 1 / 64),
        ("classical momentum",
         dict(lr=0.05, momentum=0.5, weight_decay=0.01, nesterov=0.0,
              label_smoothing=0.0, loss_scale=1.0, seed=1), 1.0, 1.0),
    ]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, hp, lm, wm in cases:
            failures += run_case(bin_dir, tmp, name, hp, lm, wm, rng)
    if failures:
        raise SystemExit(f"{failures} mismatches")
    print("optimizer step: all outputs match the float64 reference")


if __name__ == "__main__":
    main()
