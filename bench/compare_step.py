#!/usr/bin/env python3
"""Compare two one-step dumps (a trainer's --dump-step DIR) tensor by tensor.

    python3 bench/compare_step.py TESTED_DIR REFERENCE_DIR [--precision fp16]

Each DIR holds manifest.json

    {"loss": L, "correct": N, "lr": LR,
     "params": [{"name": ..., "shape": [...], "before": "p0.before.f32",
                 "after": "p0.after.f32"}, ...]}

with raw little-endian float32 files: the parameters (and running statistics)
before and after ONE training step on the same images from the same initial
values. Optional keys: "grad" (a file holding (before - after) / lr computed
at higher precision, as bench/torch_reference.py --dump-step writes),
"trainable" (false for running statistics and constants), "precision",
"skipped" (the step was skipped by loss scaling).

Run the trainers with --momentum 0 --wd 0 (and e.g. --lr-knots 0:1) so that
the implied gradient g = (before - after) / lr is the gradient of the loss
(times the parameter group's lr multiplier, e.g. x64 for biases under bot10:
the same on both sides when both come from the same recipe).

Columns, per tensor (B is the reference, errors are relative to it):
  init      max |before_A - before_B| (0 when both start from the same seed)
  weights   max |after_A - after_B| / max |after_B|
  grad l2   ||g_A - g_B||_2 / ||g_B||_2          (checked against the tolerance)
  grad max  max |g_A - g_B| / max |g_B|
  floor     the part of `grad l2` that float32 rounding of `after` alone can
            cause (2^-24 ||after||_2 / (lr ||g_B||_2), for each side without a
            "grad" file); a tensor whose floor exceeds the tolerance cannot be
            judged at this lr: rerun with a larger one.
Running statistics (no gradient) are checked on `weights` instead.
The loss is checked as |loss_A - loss_B| / |loss_B|.

Tolerances: --tol-fp32 (default 1e-3) or --tol-fp16 (default 2e-2), chosen by
--precision (default: the manifests' "precision", else fp32), or --tol.

Rounding alone makes two correct implementations differ: at ResNet9's batch
512 the early layers' gradients of an fp32 step are off by about 1e-3 (fcc's
CPU trainer 1.3e-3, PyTorch's CPU fp32 5e-4) and of an fp16 step by about
5e-2 to 8e-2 (fcc's fp16 emulation and PyTorch AMP alike), measured against
float64. So the fixed tolerances can fail correct code. --truth DIR (a float64
dump from the same initial values: torch_reference.py --dump-step
--dump-dtype float64 --init-from A_OR_B) judges A by its error against the
truth instead, allowed up to max(tolerance, --truth-factor (2) x B's error
against the truth, 2 x B's median error over the tensors of that kind): "A is
about as accurate as B".
Exit status: 0 within tolerance, 1 above it (or a tensor that cannot be
judged), 2 unusable input. --self-test checks this script on synthetic dumps.
"""

import argparse
import json
import math
import os
import sys

import numpy as np

EPS32 = 2.0 ** -24


class InputError(Exception):
    pass


def load_dump(directory):
    path = os.path.join(directory, "manifest.json")
    try:
        with open(path) as f:
            m = json.load(f)
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}")
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not JSON: {e}")
    for key in ("loss", "lr", "params"):
        if key not in m:
            raise InputError(f"{path}: no \"{key}\"")
    tensors = {}
    for k, p in enumerate(m["params"]):
        try:
            name, shape = p["name"], [int(d) for d in p["shape"]]
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: params[{k}] needs \"name\" and \"shape\"")
        numel = int(np.prod(shape)) if shape else 1
        entry = dict(name=name, shape=shape, numel=numel,
                     trainable=p.get("trainable"), role=p.get("role"))
        for key in ("before", "after", "grad"):
            if key not in p:
                if key == "grad":
                    continue
                raise InputError(f"{path}: params[{k}] ('{name}') has no \"{key}\"")
            fpath = os.path.join(directory, p[key])
            try:
                data = np.fromfile(fpath, dtype="<f4")
            except OSError as e:
                raise InputError(f"{fpath}: cannot read: {e.strerror}")
            if data.size != numel:
                raise InputError(f"{fpath}: {data.size} floats, but '{name}' has "
                                 f"shape {shape} ({numel} elements)")
            entry[key] = data.astype(np.float64)
        if name in tensors:
            raise InputError(f"{path}: '{name}' appears twice")
        tensors[name] = entry
    return m, tensors


def is_statistic(entry):
    """Running statistics and constants: no gradient to compare."""
    if entry.get("trainable") is not None:
        return not entry["trainable"]
    n = entry["name"]
    return (n.endswith("running_mean") or n.endswith("running_var")
            or n.endswith("_frozen") or n.endswith("num_batches_tracked"))


def implied_grad(entry, lr):
    if "grad" in entry:
        return entry["grad"], False
    if lr <= 0:
        raise InputError("lr must be positive to imply a gradient "
                         "(run the trainer with e.g. --lr-knots 0:1)")
    return (entry["before"] - entry["after"]) / lr, True


def rel(num, den):
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return num / den


def compare(ma, ta, mb, tb, tol, precision, truth=None, factor=2.0,
            per_tensor=False):
    """Compares dump A (tested) with dump B (reference). With truth = (manifest,
    tensors) of a higher-precision dump from the same initial values, A is
    judged by its own error against the truth, allowed up to
    max(tol, factor x B's error against the truth)."""
    rows, failures, notes = [], [], []
    mt, tt = truth if truth else (None, {})
    names = [n for n in ta if n in tb]
    only_a = [n for n in ta if n not in tb]
    only_b = [n for n in tb if n not in ta]
    if not names:
        raise InputError("the two dumps have no tensor name in common")
    lra, lrb = float(ma["lr"]), float(mb["lr"])
    lrt = float(mt["lr"]) if mt else None
    for n in names:
        a, b = ta[n], tb[n]
        if a["shape"] != b["shape"]:
            raise InputError(f"'{n}': shape {a['shape']} vs {b['shape']}")
        t = tt.get(n)
        if t is not None and t["shape"] != a["shape"]:
            raise InputError(f"'{n}': shape {a['shape']} vs {t['shape']} in the truth dump")
        r = dict(name=n, numel=a["numel"], a_truth=None, b_truth=None)
        r["init"] = float(np.max(np.abs(a["before"] - b["before"]))) if a["numel"] else 0.0
        scale = float(np.max(np.abs(b["after"]))) if b["numel"] else 0.0
        r["weights"] = rel(float(np.max(np.abs(a["after"] - b["after"]))), scale)
        stat = is_statistic(a) or is_statistic(b)
        r["kind"] = "stat" if stat else "param"
        if stat:
            r["grad_l2"] = r["grad_max"] = r["floor"] = None
            r["checked"] = r["weights"]
            if t is not None:
                ts = float(np.max(np.abs(t["after"]))) if t["numel"] else 0.0
                r["a_truth"] = rel(float(np.max(np.abs(a["after"] - t["after"]))), ts)
                r["b_truth"] = rel(float(np.max(np.abs(b["after"] - t["after"]))), ts)
        else:
            ga, rounded_a = implied_grad(a, lra)
            gb, rounded_b = implied_grad(b, lrb)
            nb = float(np.linalg.norm(gb))
            r["grad_l2"] = rel(float(np.linalg.norm(ga - gb)), nb)
            r["grad_max"] = rel(float(np.max(np.abs(ga - gb))),
                                float(np.max(np.abs(gb))))
            floor = 0.0
            if rounded_a:
                floor += EPS32 * float(np.linalg.norm(a["after"])) / lra
            if rounded_b and t is None:
                floor += EPS32 * float(np.linalg.norm(b["after"])) / lrb
            r["checked"] = r["grad_l2"]
            if t is not None:
                gt, rounded_t = implied_grad(t, lrt)
                nt = float(np.linalg.norm(gt))
                r["a_truth"] = rel(float(np.linalg.norm(ga - gt)), nt)
                r["b_truth"] = rel(float(np.linalg.norm(gb - gt)), nt)
                if rounded_t:
                    floor += EPS32 * float(np.linalg.norm(t["after"])) / lrt
                nb = nt
            r["floor"] = rel(floor, nb)
        if t is not None:
            r["checked"] = r["a_truth"]
            if float(np.max(np.abs(a["before"] - t["before"]), initial=0.0)) != 0:
                notes.append(f"'{n}': the truth dump starts from other values "
                             "(make it with torch_reference.py --init-from)")
        if r["init"] != 0:
            notes.append(f"'{n}': the initial values differ (max {r['init']:.3g}): "
                         "different seeds, or different initialisation")
        rows.append(r)

    # With a truth, the limit scales with B's error against it: per tensor,
    # but at least B's median error over the tensors of the same kind, since
    # the error of a small tensor fluctuates.
    medians = {}
    for kind in ("param", "stat"):
        errs = sorted(r["b_truth"] for r in rows if r["kind"] == kind and
                      r["b_truth"] is not None and math.isfinite(r["b_truth"]))
        medians[kind] = errs[len(errs) // 2] if errs else 0.0
    for r in rows:
        n, limit = r["name"], tol
        if r["b_truth"] is not None and math.isfinite(r["b_truth"]):
            base = r["b_truth"] if per_tensor else max(r["b_truth"], medians[r["kind"]])
            limit = max(tol, factor * base)
        r["limit"] = limit
        if r["floor"] is not None and r["floor"] > limit:
            r["status"] = "floor"
            notes.append(f"'{n}': float32 rounding alone allows a gradient error "
                         f"of {r['floor']:.2g} > tolerance {limit:.3g}; not judged "
                         "(use a larger lr)")
        elif not (r["checked"] <= limit):  # NaN fails too
            r["status"] = "FAIL"
            failures.append(n)
        else:
            r["status"] = "ok"

    la, lb = float(ma["loss"]), float(mb["loss"])
    loss_rel = rel(abs(la - lb), abs(lb))
    loss_limit, loss_checked, loss_a_truth, loss_b_truth = tol, loss_rel, None, None
    if mt is not None:
        lt = float(mt["loss"])
        loss_a_truth = rel(abs(la - lt), abs(lt))
        loss_b_truth = rel(abs(lb - lt), abs(lt))
        loss_checked = loss_a_truth
        loss_limit = max(tol, factor * loss_b_truth)
    loss_ok = loss_checked <= loss_limit
    if not loss_ok:
        failures.append("loss")
    for names_only, label in ((only_a, "first"), (only_b, "second")):
        if names_only:
            shown = ", ".join(f"'{n}'" for n in names_only[:3])
            more = f" and {len(names_only) - 3} more" if len(names_only) > 3 else ""
            notes.append(f"{len(names_only)} tensor(s) only in the {label} dump "
                         f"(not compared): {shown}{more}")
    if mt is not None:
        missing = [n for n in names if n not in tt and not is_statistic(ta[n])]
        if missing:
            notes.append(f"{len(missing)} trainable tensor(s) not in the truth dump "
                         f"(judged directly): {', '.join(missing[:3])}")
    for m, label in ((ma, "first"), (mb, "second"), (mt, "truth")):
        if m and m.get("skipped"):
            notes.append(f"the {label} dump's step was skipped (loss scaling "
                         "overflow): its gradients are zero")
    return dict(rows=rows, failures=failures, notes=notes, loss_a=la, loss_b=lb,
                loss_rel=loss_rel, loss_ok=loss_ok, loss_limit=loss_limit,
                loss_a_truth=loss_a_truth, loss_b_truth=loss_b_truth,
                correct_a=ma.get("correct"), correct_b=mb.get("correct"),
                lr_a=lra, lr_b=lrb, tol=tol, factor=factor,
                truth=mt is not None, precision=precision)


def fmt(v):
    if v is None:
        return "-"
    if v == 0:
        return "0"
    if math.isinf(v) or math.isnan(v):
        return str(v)
    return f"{v:.2e}"


def print_report(res, label_a, label_b, out=None, label_t="truth"):
    out = out or sys.stdout
    rows = res["rows"]
    truth = res["truth"]
    w = max([len("tensor")] + [len(r["name"]) for r in rows])
    cols = [("numel", 9), ("init", 8), ("weights", 8), ("grad l2", 8),
            ("grad max", 8), ("floor", 8)]
    if truth:
        cols += [("A-truth", 8), ("B-truth", 8), ("limit", 8)]
    head = f"{'tensor':<{w}}  " + "  ".join(f"{c:>{k}}" for c, k in cols) + "  status"
    print(f"one-step comparison: A = {label_a} (tested), B = {label_b} (reference)"
          + (f", truth = {label_t}" if truth else "") + f"; precision "
          f"{res['precision']}", file=out)
    if truth:
        print(f"judged: A's error against the truth (relative l2 of the gradient; "
              f"statistics: max of the updated values) <= limit = max("
              f"{res['tol']:g}, {res['factor']:g} x B's error against the truth, "
              f"{res['factor']:g} x B's median error over the tensors of that kind)",
              file=out)
    else:
        print(f"judged: relative l2 error of A's gradient against B's (statistics: "
              f"max of the updated values) <= {res['tol']:g}", file=out)
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        vals = [str(r["numel"]), fmt(r["init"]), fmt(r["weights"]), fmt(r["grad_l2"]),
                fmt(r["grad_max"]), fmt(r["floor"])]
        if truth:
            vals += [fmt(r["a_truth"]), fmt(r["b_truth"]), fmt(r["limit"])]
        print(f"{r['name']:<{w}}  " + "  ".join(f"{v:>{k}}" for v, (_, k) in
                                                zip(vals, cols)) + f"  {r['status']}",
              file=out)
    print("-" * len(head), file=out)
    judged = [r for r in rows if r["status"] != "floor"]
    worst = max(judged, key=lambda r: r["checked"] / r["limit"] if r["limit"] else 0,
                default=None)
    line = (f"loss      {res['loss_a']:.7g} vs {res['loss_b']:.7g}: difference "
            f"{res['loss_a'] - res['loss_b']:+.3g} (relative {fmt(res['loss_rel'])})")
    if truth:
        line += (f"; against the truth A {fmt(res['loss_a_truth'])}, B "
                 f"{fmt(res['loss_b_truth'])}, limit {fmt(res['loss_limit'])}")
    print(line + f" {'ok' if res['loss_ok'] else 'FAIL'}", file=out)
    if res["correct_a"] is not None and res["correct_b"] is not None:
        print(f"correct   {res['correct_a']} vs {res['correct_b']}", file=out)
    if res["lr_a"] != res["lr_b"]:
        print(f"lr        {res['lr_a']:g} vs {res['lr_b']:g}", file=out)
    if worst is not None:
        print(f"worst     {worst['name']}: {fmt(worst['checked'])} (limit "
              f"{fmt(worst['limit'])})", file=out)
    for n in res["notes"]:
        print(f"note      {n}", file=out)
    n_fail = len(res["failures"])
    unjudged = len(rows) - len(judged)
    verdict = "PASS" if n_fail == 0 and unjudged == 0 else "FAIL"
    print(f"result    {verdict}: {len(rows)} tensors compared, {n_fail} above "
          "tolerance"
          + (f" ({', '.join(res['failures'][:8])}"
             f"{', ...' if n_fail > 8 else ''})" if n_fail else "")
          + (f", {unjudged} not judged (float32 rounding floor above the "
             "tolerance)" if unjudged else ""), file=out)

def write_dump(directory, tensors, loss, lr, correct=None, grads=None, extra=None):
    """Writes a dump like a trainer's --dump-step (tensors: name -> (before,
    after) float arrays). For tests and for tools that make dumps."""
    os.makedirs(directory, exist_ok=True)
    params = []
    for k, (name, (before, after)) in enumerate(tensors.items()):
        e = dict(name=name, shape=list(np.shape(before)),
                 before=f"p{k}.before.f32", after=f"p{k}.after.f32")
        np.asarray(before, dtype="<f4").tofile(os.path.join(directory, e["before"]))
        np.asarray(after, dtype="<f4").tofile(os.path.join(directory, e["after"]))
        if grads and name in grads:
            e["grad"] = f"p{k}.grad.f32"
            np.asarray(grads[name], dtype="<f4").tofile(os.path.join(directory, e["grad"]))
        params.append(e)
    m = dict(loss=loss, correct=correct, lr=lr, params=params)
    m.update(extra or {})
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump(m, f)


def self_test():
    """Synthetic dumps with known differences; checks verdicts and exit codes."""
    import contextlib
    import io
    import tempfile
    rng = np.random.default_rng(0)
    lr = 0.5

    def model(grad_scale=None, stat_scale=1.0, noise=0.0, frozen=True):
        t = {}
        for name, shape in [("conv.weight", (16, 3, 3, 3)), ("bn.bias", (16,)),
                            ("fc.weight", (10, 16))]:
            before = rng_fixed[name]
            g = grads_fixed[name] * (grad_scale or {}).get(name, 1.0)
            g = g * (1.0 + noise * rng.standard_normal(g.shape))
            t[name] = (before, before - lr * g)
        t["bn.running_var"] = (np.ones(16), stat_fixed * stat_scale)
        if frozen:
            t["bn.weight_frozen"] = (np.ones(16), np.ones(16))
        return t

    rng_fixed = {n: rng.uniform(-0.2, 0.2, s) for n, s in
                 [("conv.weight", (16, 3, 3, 3)), ("bn.bias", (16,)),
                  ("fc.weight", (10, 16))]}
    grads_fixed = {n: rng.standard_normal(v.shape) * 0.05 for n, v in rng_fixed.items()}
    stat_fixed = rng.uniform(0.5, 2.0, 16)
    cases = [
        # (label, tested dump kwargs, loss, extra flags, expected exit status)
        ("identical", dict(), 2.3, [], 0),
        ("noise 1e-5", dict(noise=1e-5), 2.3, [], 0),
        ("one gradient 0.5% off, fp32", dict(grad_scale={"bn.bias": 1.005}), 2.3, [], 1),
        ("one gradient 0.5% off, fp16", dict(grad_scale={"bn.bias": 1.005}), 2.3,
         ["--precision", "fp16"], 0),
        ("gradient 5% off, fp16", dict(grad_scale={"fc.weight": 1.05}), 2.3,
         ["--precision", "fp16"], 1),
        ("running var 3% off, fp16", dict(stat_scale=1.03), 2.3,
         ["--precision", "fp16"], 1),
        ("loss 1% off, fp32", dict(), 2.323, [], 1),
        ("loss 1% off, --tol 0.05", dict(), 2.323, ["--tol", "0.05"], 0),
        ("frozen constant only in one dump", dict(frozen=False), 2.3, [], 0),
    ]
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        ref = os.path.join(tmp, "ref")
        write_dump(ref, model(), 2.3, lr, correct=7)
        for k, (label, kw, loss, flags, want) in enumerate(cases):
            d = os.path.join(tmp, f"t{k}")
            write_dump(d, model(**kw), loss, lr, correct=7)
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                got = main([d, ref] + flags)
            ok = got == want
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {label}: exit {got} (expected {want})")
            if not ok:
                print(buf.getvalue())
        # unusable input: a missing file, a wrong size, no manifest
        bad = os.path.join(tmp, "bad")
        write_dump(bad, model(), 2.3, lr)
        os.remove(os.path.join(bad, "p0.after.f32"))
        short = os.path.join(tmp, "short")
        write_dump(short, model(), 2.3, lr)
        np.zeros(3, dtype="<f4").tofile(os.path.join(short, "p1.before.f32"))
        for label, d in [("missing tensor file", bad), ("wrong file size", short),
                         ("no manifest", os.path.join(tmp, "nothing"))]:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                got = main([d, ref])
            ok = got == 2
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {label}: exit {got} (expected 2)")
        # the float32 rounding floor: a tiny lr makes the implied gradient
        # meaningless, which must be reported rather than judged
        t = model()
        small = {n: (b, (b - (b - a) / lr * 1e-9).astype(np.float32))
                 for n, (b, a) in t.items()}
        fl = os.path.join(tmp, "floor")
        write_dump(fl, small, 2.3, 1e-9)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            got = main([fl, fl])
        ok = got == 1 and "not judged" in buf.getvalue()
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} rounding floor reported: exit {got}")
        # --truth: both sides 1% off the truth pass ("as accurate"); a side
        # 5% off fails against a reference 1% off
        tr = os.path.join(tmp, "truth")
        write_dump(tr, model(), 2.3, lr)
        b1 = os.path.join(tmp, "b1")
        write_dump(b1, model(noise=1e-2), 2.3, lr)
        for label, noise, want in [("truth: A and B both 1% off", 1e-2, 0),
                                   ("truth: A 5% off, B 1% off", 5e-2, 1)]:
            d = os.path.join(tmp, f"a{noise}")
            write_dump(d, model(noise=noise), 2.3, lr)
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                got = main([d, b1, "--truth", tr])
            ok = got == want
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {label}: exit {got} (expected {want})")
            if not ok:
                print(buf.getvalue())
        # --truth-per-tensor: B far off the truth in two tensors and close
        # in fc.weight; A 20% off in fc.weight passes against the median
        # of B's errors (40%) but not against B's own fc error (1%)
        far = {"conv.weight": 1.4, "bn.bias": 1.4}
        bf = os.path.join(tmp, "bfar")
        write_dump(bf, model(grad_scale=dict(far, **{"fc.weight": 1.01})), 2.3, lr)
        af = os.path.join(tmp, "afar")
        write_dump(af, model(grad_scale=dict(far, **{"fc.weight": 1.2})), 2.3, lr)
        for label, flags, want in [("truth: median rule", [], 0),
                                   ("truth: --truth-per-tensor", ["--truth-per-tensor"], 1)]:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                got = main([af, bf, "--truth", tr] + flags)
            ok = got == want
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {label}: exit {got} (expected {want})")
            if not ok:
                print(buf.getvalue())
    print(f"{len(cases) + 8 - failed} passed, {failed} failed")
    return 1 if failed else 0


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Compare two --dump-step directories tensor by tensor.")
    p.add_argument("tested", nargs="?",
                   help="dump directory to check (e.g. the CUDA trainer's)")
    p.add_argument("reference", nargs="?",
                   help="reference dump directory (e.g. the CPU trainer's)")
    p.add_argument("--self-test", action="store_true",
                   help="check this script on synthetic dumps and exit")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"],
                   help="picks the tolerance (default: the manifests' "
                        "\"precision\", else fp32)")
    p.add_argument("--tol-fp32", type=float, default=1e-3)
    p.add_argument("--tol-fp16", type=float, default=2e-2,
                   help="also used for bf16")
    p.add_argument("--tol", type=float, help="overrides both")
    p.add_argument("--truth", metavar="DIR",
                   help="a higher-precision dump from the same initial values "
                        "(torch_reference.py --dump-step --init-from): judge A "
                        "by its error against it, allowed up to max(tolerance, "
                        "--truth-factor x B's error against it)")
    p.add_argument("--truth-factor", type=float, default=2.0)
    p.add_argument("--truth-per-tensor", action="store_true",
                   help="limit from each tensor's own B error only (not at "
                        "least the median over tensors of its kind): for "
                        "errors that are large and stable, like a "
                        "compressor's against the dense update")
    p.add_argument("--labels", default=None,
                   help="names of the sides, e.g. cuda,cpu or cuda,cpu,torch64")
    p.add_argument("--json", help="also write the comparison as JSON here")
    a = p.parse_args(argv)
    if a.self_test:
        return self_test()
    if not a.tested or not a.reference:
        p.error("two dump directories are needed (or --self-test)")
    try:
        ma, ta = load_dump(a.tested)
        mb, tb = load_dump(a.reference)
        precision = a.precision or ma.get("precision") or mb.get("precision") or "fp32"
        tol = a.tol if a.tol is not None else (
            a.tol_fp32 if precision == "fp32" else a.tol_fp16)
        truth = load_dump(a.truth) if a.truth else None
        res = compare(ma, ta, mb, tb, tol, precision, truth, a.truth_factor,
                      a.truth_per_tensor)
    except InputError as e:
        print(f"compare_step.py: error: {e}", file=sys.stderr)
        return 2
    labels = a.labels.split(",") if a.labels else []
    if len(labels) not in (2, 3):
        labels = [a.tested, a.reference]
    labels += [a.truth or "truth"] * (3 - len(labels))
    print_report(res, labels[0], labels[1], label_t=labels[2])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
            f.write("\n")
    unjudged = any(r["status"] == "floor" for r in res["rows"])
    return 0 if not res["failures"] and not unjudged else 1


if __name__ == "__main__":
    sys.exit(main())
