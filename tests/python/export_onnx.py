#!/usr/bin/env python3
"""TRAINER --export-onnx [--export-bn fold|keep]: the trained model leaves as
a standard ONNX file.

A narrow ResNet9 (graph-only ONNX from fcc-models), the narrow
bag-of-tricks ResNet9 (recipe bot10: EMA, label smoothing, frozen BatchNorm
scales made by Constant nodes; TTA off, as an exported model has none) and
a narrow AlexNet are compiled into CPU trainers, trained briefly on
tests/data/cifar10-mini with --export-onnx (ResNet9 with --ema, so the EMA
weights are exported) and a checkpoint; the checkpoint is then exported
again with --resume --eval-only --export-bn fold. Both files must pass the
ONNX checker (IR version <= 8) and carry every parameter as an initializer
(or keep the node that computes it); the kept one keeps the graph, the
folded one has no BatchNormalization node after a Conv left (ResNet9: 8
folded; resnet9-bot: 5 folded, 3 after a MaxPool kept; AlexNet has none),
none of the folded ones' tensors, and gives the same logits as the kept one
in onnxruntime up to float rounding. The test accuracy of each, computed by onnxruntime (an
independent runtime) and by fcc's own evaluator (`fcc run`) on the test
images normalised as the trainer does, must equal the trainer's last
reported test accuracy to within 0.1 points (on 250 images: the same
count), and so must the accuracy --eval-only prints.

Usage: export_onnx.py BIN_DIR DATA_DIR
"""
import json
import os
import re
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


def accuracy_of(bin_dir, tmp, path, x, labels, tag):
    """(onnxruntime logits, onnxruntime correct, fcc run correct)."""
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": x})[0]
    ort_correct = int((logits.argmax(axis=1) == labels).sum())
    xin = os.path.join(tmp, "x.pb")
    if not os.path.exists(xin):
        with open(xin, "wb") as f:
            f.write(numpy_helper.from_array(x).SerializeToString())
    out_dir = os.path.join(tmp, tag + "-eval")
    run([os.path.join(bin_dir, "fcc"), "run", path, "--input",
         f"input={xin}", "--output-dir", out_dir, "--print-limit", "1"])
    fcc_logits = numpy_helper.to_array(
        onnx.load_tensor(os.path.join(out_dir, "output_0.pb")))
    fcc_correct = int((fcc_logits.argmax(axis=1) == labels).sum())
    return logits, ort_correct, fcc_correct


def main():
    bin_dir, data_dir = sys.argv[1], sys.argv[2]
    x, labels = test_images(data_dir)
    n = len(labels)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for zoo, width, recipe, extra, lr, bns, kept_bns in [
                ("resnet9", "0.125", [], ["--ema", "0.9"], "0.1", 8, 0),
                ("resnet9-bot", "0.125", ["--recipe", "bot10"],
                 ["--no-tta"], "0.4", 5, 3),
                ("alexnet", "0.25", [], [], "0.1", 0, 0)]:
            model = os.path.join(tmp, zoo + ".onnx")
            run([os.path.join(bin_dir, "fcc-models"), zoo, "--width-mult",
                 width, "-o", model])
            trainer = os.path.join(tmp, zoo)
            run([os.path.join(bin_dir, "fcc"), "compile", model, "--target",
                 "cpu", "--batch", "50", "-o", trainer, "-q", *recipe])
            kept = os.path.join(tmp, zoo + "-trained.onnx")
            folded = os.path.join(tmp, zoo + "-folded.onnx")
            metrics = os.path.join(tmp, zoo + ".jsonl")
            ckpt = os.path.join(tmp, zoo + "-ckpt")
            common = ["--data", data_dir, "--threads", "1", *extra]
            run([trainer, *common, "--epochs", "2", "--lr-knots",
                 f"0:0,1:{lr},2:0", "--export-onnx", kept, "--metrics", metrics,
                 "--checkpoint-dir", ckpt, "--quiet"])
            with open(metrics) as f:
                trainer_acc = [json.loads(l) for l in f][-1]["test_acc"]
            trainer_correct = round(trainer_acc * n)
            # The same trained state, exported with BatchNorm folded.
            out = run([trainer, *common, "--checkpoint-dir", ckpt, "--resume",
                       "--eval-only", "--export-onnx", folded, "--export-bn",
                       "fold", "--quiet"]).stdout
            match = re.search(r"test acc [0-9.]+ \((\d+) of (\d+) images\)",
                              out)
            eval_correct = int(match.group(1)) if match else -1
            ok_fold_line = (f"{bns} BatchNormalization{'' if bns == 1 else 's'}"
                            f" folded into Convs, {kept_bns} kept") in out

            original = onnx.load(model)
            params = [i.name for i in original.graph.input if i.name != "input"]
            results = {}
            for tag, path in [("keep", kept), ("fold", folded)]:
                m = onnx.load(path)
                onnx.checker.check_model(m, full_check=True)
                inits = {t.name for t in m.graph.initializer}
                made = {o for node in m.graph.node for o in node.output}
                inputs = [i.name for i in m.graph.input]
                ops = [node.op_type for node in m.graph.node]
                if tag == "keep":
                    ok_struct = (set(params) <= inits
                                 and len(ops) == len(original.graph.node))
                else:
                    # The Convs take over the outputs of the folded
                    # BatchNorms; their weights and biases stay (biases
                    # added), the BatchNorms' tensors go, with the Constant
                    # nodes that made frozen scales.
                    conv_out = {node.output[0] for node in m.graph.node
                                if node.op_type == "Conv"}
                    folded_bns = [node for node in original.graph.node
                                  if node.op_type == "BatchNormalization"
                                  and node.output[0] in conv_out]
                    gone = {i for node in folded_bns for i in node.input[1:]}
                    constants = sum(1 for node in original.graph.node
                                    if node.op_type == "Constant"
                                    and node.output[0] in gone)
                    ok_struct = (len(folded_bns) == bns
                                 and ops.count("BatchNormalization") == kept_bns
                                 and set(params) - gone <= inits | made
                                 and not (gone & (inits | made))
                                 and len(ops) == len(original.graph.node)
                                 - bns - constants and ok_fold_line)
                ok_struct = ok_struct and m.ir_version <= 8 and inputs == [
                    "input"]
                logits, ort_correct, fcc_correct = accuracy_of(
                    bin_dir, tmp, path, x, labels, zoo + "-" + tag)
                # Within 0.1 points of the trainer's accuracy.
                ok = (ok_struct
                      and abs(ort_correct - trainer_correct) <= 0.001 * n
                      and abs(fcc_correct - trainer_correct) <= 0.001 * n)
                results[tag] = logits
                failures += not ok
                print(f"{zoo} {tag}: {len(inits)} initializers, "
                      f"{ops.count('BatchNormalization')} BatchNormalization "
                      f"of {len(ops)} nodes, IR {m.ir_version}, inputs "
                      f"{inputs}; test accuracy trainer {trainer_correct}/{n}"
                      f", onnxruntime {ort_correct}/{n}, fcc run "
                      f"{fcc_correct}/{n}{'' if ok else '  <-- FAIL'}")
            diff = float(np.abs(results["fold"] - results["keep"]).max())
            scale = float(np.abs(results["keep"]).max())
            ok = diff <= 1e-4 * max(1.0, scale) and abs(
                eval_correct - trainer_correct) <= 0.001 * n
            failures += not ok
            print(f"{zoo}: fold vs keep in onnxruntime: max |logit diff| "
                  f"{diff:.3g} (logits up to {scale:.3g}); --eval-only "
                  f"{eval_correct}/{n}{'' if ok else '  <-- FAIL'}")
    if failures:
        sys.exit(f"{failures} checks of the exported models failed")


if __name__ == "__main__":
    main()
