#!/usr/bin/env python3
"""Regenerates the fuzzer's seed corpus (tests/fuzz/corpus/).

Seeds are small valid models, plus the lit error inputs (valid protobufs that
the importer rejects) so that the fuzzer starts next to every error path:

  zoo-*.onnx          models/*.onnx (graph only) and fcc-models --with-weights
                      at --width-mult 0.01 (initializers, a few KB each)
  import-*.onnx(txt)  tests/lit/import/*.onnxtxt, as text and as binary
  loose-*.onnx(txt)   the same with symbolic output dimensions
  error-*.onnx(txt)   tests/lit/errors/Inputs/*.onnxtxt, as text and binary

Text seeds have their '#' comment lines removed so that they start with '<',
which is how the fuzz target tells ONNX text syntax from a binary ModelProto.

Usage: make-corpus.py FCC_MODELS_BINARY [OUT_DIR]   (needs `pip install onnx`)
"""
import pathlib
import shutil
import subprocess
import sys

import onnx
import onnx.parser
import onnx.printer

root = pathlib.Path(__file__).resolve().parents[2]
fcc_models = sys.argv[1]
out = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else root / "tests/fuzz/corpus"
out.mkdir(parents=True, exist_ok=True)

for f in sorted((root / "models").glob("*.onnx")):
    shutil.copy(f, out / f"zoo-{f.stem}.onnx")
for name in ["resnet9", "resnet9-bot", "alexnet"]:
    subprocess.run([fcc_models, name, "--width-mult", "0.01", "--with-weights",
                    "--seed", "1", "--batch", "2",
                    "-o", str(out / f"zoo-{name}-weights.onnx")],
                   check=True, stdout=subprocess.DEVNULL)

for prefix, folder in [("import", "tests/lit/import"),
                       ("error", "tests/lit/errors/Inputs")]:
    for f in sorted((root / folder).glob("*.onnxtxt")):
        lines = [l for l in f.read_text().splitlines()
                 if not l.lstrip().startswith("#")]
        text = "\n".join(lines).strip() + "\n"
        (out / f"{prefix}-{f.stem}.onnxtxt").write_text(text)
        try:
            model = onnx.parser.parse_model(text)
        except Exception as e:  # e.g. the deliberate syntax error
            print(f"make-corpus: {f.name}: no binary seed ({e})".splitlines()[0])
            continue
        (out / f"{prefix}-{f.stem}.onnx").write_bytes(model.SerializeToString())
        if prefix == "import":
            # The same graph with symbolic output dimensions: mutated input
            # shapes and attributes then get past ONNX's output-shape check
            # and on into fcc's own shape rules.
            for o in model.graph.output:
                for k, d in enumerate(o.type.tensor_type.shape.dim):
                    d.dim_param = f"{o.name}_{k}"
            (out / f"loose-{f.stem}.onnx").write_bytes(model.SerializeToString())
            (out / f"loose-{f.stem}.onnxtxt").write_text(onnx.printer.to_text(model) + "\n")

total = sum(p.stat().st_size for p in out.iterdir())
print(f"make-corpus: {len(list(out.iterdir()))} seeds, {total} bytes in {out}")
