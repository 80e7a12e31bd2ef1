#!/usr/bin/env python3
"""A compiled trainer's step against fcc's IR evaluator.

The trainer (generated C++, linked with the runtime; --target cpu) runs one
training step with --dump-step on the first batch of tests/data/cifar10-mini
(no augmentation), at learning rate 1 with momentum and weight decay 0, so
that the gradient it applied is exactly before - after. The evaluator runs
@loss_and_grads of the same model (same seed, so the same PyTorch-default
initial parameters) on the same batch, normalised here in numpy the way the
trainer documents it (per-channel mean and population std of the training
images, float32 arithmetic). This checks code generation, the memory plan,
the trainer's data path and parameter initialisation end to end against an
independent execution of the IR.

Usage: trainer_vs_evaluator.py BIN_DIR DATA_DIR
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import numpy_helper

BATCH = 16
SEED = 3


def run(args, **kw):
    proc = subprocess.run(args, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc


def cifar_batch(data_dir):
    raw = np.fromfile(os.path.join(data_dir, "data_batch_1.bin"), np.uint8)
    records = raw.reshape(-1, 3073)
    labels = records[:, 0].astype(np.int32)
    images = records[:, 1:].reshape(-1, 3, 32, 32)
    # Statistics over all training images (the sample has one batch file).
    pix = images.transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64)
    mean = pix.mean(axis=1).astype(np.float32)
    std = pix.std(axis=1).astype(np.float32)
    inv = (np.float32(1) / std).astype(np.float32)
    x = (images[:BATCH].astype(np.float32) - mean[None, :, None, None]) \
        * inv[None, :, None, None]
    return x.astype(np.float32), labels[:BATCH]


def main():
    bin_dir, data_dir = sys.argv[1], sys.argv[2]
    fcc = os.path.join(bin_dir, "fcc")
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "r9.onnx")
        run([os.path.join(bin_dir, "fcc-models"), "resnet9", "--width-mult",
             "0.125", "--input", "3x32x32", "-o", model])
        trainer = os.path.join(tmp, "r9")
        run([fcc, "compile", model, "--target", "cpu", "--batch", str(BATCH),
             "-o", trainer, "-q"])
        dump = os.path.join(tmp, "dump")
        run([trainer, "--data", data_dir, "--dump-step", dump, "--seed",
             str(SEED), "--lr-knots", "0:1", "--momentum", "0", "--wd", "0",
             "--label-smoothing", "0.1", "--threads", "1", "--quiet"])
        with open(os.path.join(dump, "manifest.json")) as f:
            manifest = json.load(f)

        x, labels = cifar_batch(data_dir)
        inputs = {"input": x, "labels": labels,
                  "label_smoothing": np.array(0.1, np.float32),
                  "seed": np.array(0, np.int64)}
        args = [fcc, "run", model, "--stage", "training", "--function",
                "loss_and_grads", "--batch", str(BATCH), "--seed", str(SEED),
                "--output-dir", os.path.join(tmp, "eval"), "--print-limit",
                "1"]
        for name, value in inputs.items():
            path = os.path.join(tmp, name + ".pb")
            with open(path, "wb") as f:
                f.write(numpy_helper.from_array(value).SerializeToString())
            args += ["--input", f"{name}={path}"]
        printed = run(args).stdout
        if os.environ.get("FCC_TEST_VERBOSE"):
            print(printed)
        names = [line.rsplit(":", 1)[0] for line in printed.splitlines()
                 if line and not line.startswith(("[", " "))]
        outputs = {}
        for k, name in enumerate(names):
            t = onnx.load_tensor(os.path.join(tmp, "eval", f"output_{k}.pb"))
            outputs[name] = numpy_helper.to_array(t).astype(np.float64)

        failures = 0
        loss_eval = float(outputs["loss"])
        loss_trainer = manifest["loss"]
        rel = abs(loss_eval - loss_trainer) / abs(loss_eval)
        print(f"loss: trainer {loss_trainer:.7f} evaluator {loss_eval:.7f} "
              f"(rel {rel:.1e})")
        failures += rel > 1e-5
        checked = 0
        for k, p in enumerate(manifest["params"]):
            if not p["trainable"]:
                continue
            shape = p["shape"]
            before = np.fromfile(os.path.join(dump, p["before"]), np.float32)
            after = np.fromfile(os.path.join(dump, p["after"]), np.float32)
            implied = (before.astype(np.float64) - after) / manifest["lr"]
            grad = outputs["grad:" + p["name"]].reshape(-1)
            err = np.max(np.abs(implied - grad)) / max(np.max(np.abs(grad)),
                                                       1e-12)
            ok = err < 1e-4
            failures += not ok
            checked += 1
            print(f"  {p['name']:28s} {str(shape):18s} max err / max|g| "
                  f"{err:.1e}{'' if ok else '  <-- FAIL'}")
        if checked == 0:
            failures += 1
            print("no trainable parameters were compared")

        # Initialisation: a graph-only model's trainer starts from the values
        # fcc-models --with-weights embeds for the same seed (PyTorch's
        # default scheme with each layer's fan-in, computed by the model zoo
        # independently of the compiler). AlexNet adds linear layers.
        for zoo in ["resnet9", "alexnet"]:
            graph = os.path.join(tmp, zoo + ".onnx")
            weights = os.path.join(tmp, zoo + "-w.onnx")
            common = [zoo, "--width-mult", "0.125"]
            run([os.path.join(bin_dir, "fcc-models"), *common, "-o", graph])
            run([os.path.join(bin_dir, "fcc-models"), *common, "--with-weights",
                 "--seed", str(SEED), "-o", weights])
            exe = os.path.join(tmp, zoo + "-trainer")
            run([fcc, "compile", graph, "--target", "cpu", "--batch",
                 str(BATCH), "-o", exe, "-q"])
            zdump = os.path.join(tmp, zoo + "-dump")
            run([exe, "--data", data_dir, "--dump-step", zdump, "--seed",
                 str(SEED), "--lr-knots", "0:0", "--threads", "1", "--quiet"])
            with open(os.path.join(zdump, "manifest.json")) as f:
                zman = json.load(f)
            inits = {t.name: numpy_helper.to_array(t)
                     for t in onnx.load(weights).graph.initializer}
            worst, compared = 0.0, 0
            for p in zman["params"]:
                if p["name"] not in inits:
                    continue
                got = np.fromfile(os.path.join(zdump, p["before"]),
                                  np.float32)
                want = inits[p["name"]].reshape(-1)
                worst = max(worst, float(np.max(np.abs(got - want))))
                compared += 1
            ok = compared == len(zman["params"]) and worst == 0.0
            failures += not ok
            print(f"initial values of {zoo}: {compared}/{len(zman['params'])} "
                  f"tensors, max |trainer - fcc-models| {worst:.1e}"
                  f"{'' if ok else '  <-- FAIL'}")
    if failures:
        sys.exit(f"{failures} mismatches between the trainer and the "
                 "evaluator")
    print(f"trainer step == evaluator on {checked} parameter tensors")


if __name__ == "__main__":
    main()
