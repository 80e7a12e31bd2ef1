#!/usr/bin/env python3
"""TRAINER --export-onnx: the trained model leaves as a standard ONNX file.

A narrow ResNet9 (graph-only ONNX from fcc-models) and a narrow AlexNet are
compiled into CPU trainers, trained briefly on tests/data/cifar10-mini with
--export-onnx (ResNet9 with --ema, so the EMA weights are exported). The
exported file must pass the ONNX checker (IR version <= 8), keep the graph
and carry every parameter as an initializer; its test accuracy, computed by
onnxruntime (an independent runtime) and by fcc's own evaluator (`fcc run`)
on the test images normalised as the trainer does, must equal the trainer's
last reported test accuracy to within one image of the 250.

Usage: export_onnx.py BIN_DIR DATA_DIR
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def run(args):
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc


def test_images(data_dir):
    train = np.fromfile(os.path.join(data_dir, "data_batch_1.bin"),
                        np.uint8).reshape(-1, 3073)
    pix = train[:, 1:].reshape(-1, 3, 32, 32).transpose(1, 0, 2, 3) \
        .reshape(3, -1).astype(np.float64)
    mean = pix.mean(axis=1).astype(np.float32)
    inv = (np.float32(1) / pix.std(axis=1).astype(np.float32)).astype(
        np.float32)
    test = np.fromfile(os.path.join(data_dir, "test_batch.bin"),
                       np.uint8).reshape(-1, 3073)
    x = (test[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32)
         - mean[None, :, None, None]) * inv[None, :, None, None]
    return x.astype(np.float32), test[:, 0].astype(np.int64)


def main():
    bin_dir, data_dir = sys.argv[1], sys.argv[2]
    x, labels = test_images(data_dir)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for zoo, width, extra in [("resnet9", "0.125", ["--ema", "0.9"]),
                                  ("alexnet", "0.25", [])]:
            model = os.path.join(tmp, zoo + ".onnx")
            run([os.path.join(bin_dir, "fcc-models"), zoo, "--width-mult",
                 width, "-o", model])
            trainer = os.path.join(tmp, zoo)
            run([os.path.join(bin_dir, "fcc"), "compile", model, "--target",
                 "cpu", "--batch", "50", "-o", trainer, "-q"])
            exported = os.path.join(tmp, zoo + "-trained.onnx")
            metrics = os.path.join(tmp, zoo + ".jsonl")
            run([trainer, "--data", data_dir, "--epochs", "2", "--lr-knots",
                 "0:0,1:0.1,2:0", "--threads", "1", "--export-onnx", exported,
                 "--metrics", metrics, "--quiet", *extra])
            with open(metrics) as f:
                trainer_acc = [json.loads(l) for l in f][-1]["test_acc"]

            m = onnx.load(exported)
            onnx.checker.check_model(m)
            inits = {t.name for t in m.graph.initializer}
            inputs = [i.name for i in m.graph.input]
            original = onnx.load(model)
            params = [i.name for i in original.graph.input if i.name != "input"]
            ok_struct = (m.ir_version <= 8 and set(params) <= inits
                         and inputs == ["input"]
                         and len(m.graph.node) == len(original.graph.node))

            sess = ort.InferenceSession(exported,
                                        providers=["CPUExecutionProvider"])
            logits = sess.run(None, {"input": x})[0]
            ort_correct = int((logits.argmax(axis=1) == labels).sum())

            xin = os.path.join(tmp, "x.pb")
            with open(xin, "wb") as f:
                f.write(numpy_helper.from_array(x).SerializeToString())
            out_dir = os.path.join(tmp, zoo + "-eval")
            run([os.path.join(bin_dir, "fcc"), "run", exported, "--input",
                 f"input={xin}", "--output-dir", out_dir, "--print-limit",
                 "1"])
            fcc_logits = numpy_helper.to_array(
                onnx.load_tensor(os.path.join(out_dir, "output_0.pb")))
            fcc_correct = int((fcc_logits.argmax(axis=1) == labels).sum())

            n = len(labels)
            trainer_correct = round(trainer_acc * n)
            ok = (ok_struct and abs(ort_correct - trainer_correct) <= 1
                  and abs(fcc_correct - trainer_correct) <= 1)
            failures += not ok
            print(f"{zoo}: exported {len(inits)} initializers, IR "
                  f"{m.ir_version}, inputs {inputs}; test accuracy trainer "
                  f"{trainer_correct}/{n}, onnxruntime {ort_correct}/{n}, "
                  f"fcc run {fcc_correct}/{n}"
                  f"{'' if ok else '  <-- FAIL'}")
    if failures:
        sys.exit(f"{failures} exported models do not reproduce the trainer")


if __name__ == "__main__":
    main()
