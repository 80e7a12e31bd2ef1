#!/usr/bin/env python3
"""PyTorch reference of fcc's ResNet9 trainers, for speed and accuracy comparisons.

The same network, recipe and data pipeline as a trainer made by

    fcc compile models/resnet9.onnx --recipe page24 --batch 512        (resnet9)
    fcc compile resnet9-bot.onnx   --recipe bot10  --batch 512        (resnet9-bot)

written the way a careful PyTorch user would (data resident on the device as
uint8, normalisation and augmentation as batched tensor ops on the device,
channels-last, autocast fp16 with dynamic loss scaling, fused SGD, metrics
read once per epoch), in eager mode or with --compile (torch.compile).

What is matched, and where fcc defines it:
  model    models/ModelZoo.cpp: prep conv-bn(64); layer1 conv-bn(128) + pool +
           residual(2 x conv-bn(128)); layer2 conv-bn(256) + pool; layer3
           conv-bn(512) + pool + residual(2 x conv-bn(512)); global max pool;
           linear 512->10 without bias; logits x 0.125. conv 3x3 pad 1, no
           bias; BN eps 1e-5, momentum 0.1 (PyTorch convention), unbiased
           running variance. resnet9 = conv -> BN -> ReLU -> pool;
           resnet9-bot = conv -> pool -> BN (scale frozen at 1) -> CELU(0.3).
           Parameter names are fcc's (prep.conv.weight, layer1.res1.bn.bias,
           fc.weight, ...).
  init     runtime/cpu/init.cpp: --init fcc (default) reproduces fcc's
           fcc_param_init bit for bit (Philox-4x32-10 keyed by seed and the
           FNV-1a hash of the parameter name), so a run with --seed S starts
           from exactly the weights of the fcc trainer's run with --seed S;
           --init torch uses PyTorch's defaults (same distributions).
  recipe   codegen/Recipe.cpp: page24 / bot10 (lr knots in fractional epochs,
           lr of step s = schedule(s / steps_per_epoch); SGD momentum 0.9,
           Nesterov, weight decay 5e-4 added to the gradient; bot10: biases and
           BN parameters lr x64 and wd /64, label smoothing 0.2 (PyTorch's
           formulation), EMA of parameters and running statistics with decay
           0.99**5 applied every 5 steps, evaluation with the EMA weights, flip
           TTA averaging the logits).
  data     runtime/trainer/{Data,Augment}.cpp: CIFAR-10 binary batches
           (data_batch_1..5.bin, whichever are present, and test_batch.bin),
           per-channel mean/std of the training images used (after
           --train-limit), normalise -> reflect-pad 4 + random crop -> flip ->
           cutout (square of zeros, centre uniform over the image, clipped);
           full batches only, reshuffled every epoch; evaluation on the whole
           test set (last batch padded, padding ignored). --rng fcc draws the
           shuffles, crops, flips and cutout centres with fcc's Philox streams,
           so both train on exactly the same batches; --rng torch (default)
           draws them with the device generator.
  report   the trainer's epoch table, --metrics JSON lines with the same keys
           (run, seed, epoch, lr, train_loss, train_acc, test_loss, test_acc,
           epoch_time_s, eval_time_s, total_time_s, train_images, test_images,
           steps, skipped_steps, loss_scale, images_per_s). Times count the
           training steps only (epoch_time_s) or the evaluation only
           (eval_time_s); the one-time start-up (imports, data upload, model
           build, cuDNN autotuning and torch.compile during --warmup-steps
           steps that are then undone) is reported separately.

--dump-step DIR writes the one-step dump of fcc trainers' --dump-step (same
manifest.json) from the same initial weights and images, optionally in
float64 (--dump-dtype float64), as an independent reference for
bench/compare_step.py.

Runs on the CPU too (--device cpu), for smoke tests with a small
--train-limit. Exit codes as fcc trainers: 0 ok, 1 usage or data, 2 no device,
3 diverged.
"""

import time

PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

EXIT_OK, EXIT_USAGE, EXIT_NO_DEVICE, EXIT_DIVERGED = 0, 1, 2, 3

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # pragma: no cover - depends on the machine
    print(f"torch_reference.py: error: PyTorch is not installed ({e})",
          file=sys.stderr)
    sys.exit(EXIT_USAGE)


class UsageError(Exception):
    pass


# ---------------------------------------------------------------------------
# fcc's random numbers (runtime/cpu/random.cpp) and initialisation
# (runtime/cpu/init.cpp), bit for bit
# ---------------------------------------------------------------------------

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF
_U32 = np.uint64(_MASK32)
_S32 = np.uint64(32)


def _philox_blocks(seed, stream, blocks):
    """Philox-4x32-10 of counters (block, stream) with key seed: 4 words each."""
    blocks = np.asarray(blocks, dtype=np.uint64)
    c0 = blocks & _U32
    c1 = blocks >> _S32
    c2 = np.full_like(blocks, stream & _MASK32)
    c3 = np.full_like(blocks, (stream >> 32) & _MASK32)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(10):
        p0 = _M0 * c0  # < 2^64: exact in uint64
        p1 = _M1 * c2
        n0 = (p1 >> _S32) ^ c1 ^ np.uint64(k0)
        n2 = (p0 >> _S32) ^ c3 ^ np.uint64(k1)
        c0, c1, c2, c3 = n0, p1 & _U32, n2, p0 & _U32
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def philox_u32(seed, stream, index):
    """fcc_random_u32(seed, stream, index) for an array of indices."""
    index = np.asarray(index, dtype=np.uint64)
    words = _philox_blocks(seed, stream, index >> np.uint64(2))
    lane = (index & np.uint64(3)).astype(np.int64)
    return np.choose(lane, words).astype(np.uint32)


def philox_range_u32(seed, stream, count):
    """fcc_random_u32(seed, stream, i) for i = 0 .. count-1 (one block per 4)."""
    nblocks = (count + 3) // 4
    words = _philox_blocks(seed, stream, np.arange(nblocks, dtype=np.uint64))
    return np.stack(words, axis=1).reshape(-1)[:count].astype(np.uint32)


def fnv1a64(name):
    h = 0xCBF29CE484222325
    for byte in name.encode():
        h ^= byte
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def fcc_uniform_init(name, count, fan_in, seed):
    """fcc_param_init for weights and biases: U[-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bits = philox_range_u32(seed, fnv1a64(name), count)
    u = (bits >> np.uint32(8)).astype(np.float64) * (1.0 / 16777216.0)
    bound = 1.0 / math.sqrt(float(fan_in))
    return ((2.0 * u - 1.0) * bound).astype(np.float32)


_SHUFFLE_TAG, _AUGMENT_TAG = 1, 2


def _stream_of(tag, value):
    return (tag << 56) | (value & ((1 << 56) - 1))


def _below(bits, bound):
    return ((bits.astype(np.uint64) * np.uint64(bound)) >> _S32).astype(np.int64)


def fcc_epoch_order(count, seed, epoch):
    """runtime/trainer/Augment.cpp epochOrder (one shard): Fisher-Yates, Philox."""
    bits = philox_range_u32(seed, _stream_of(_SHUFFLE_TAG, epoch), count)
    order = np.arange(count, dtype=np.int64)
    if count < 2:
        return order
    i = np.arange(count, dtype=np.uint64)
    j = ((bits.astype(np.uint64) * (i + np.uint64(1))) >> _S32).astype(np.int64)
    o = order.tolist()
    jj = j.tolist()
    for k in range(count - 1, 0, -1):
        t = jj[k]
        o[k], o[t] = o[t], o[k]
    return np.asarray(o, dtype=np.int64)


def fcc_augment_draws(count, seed, epoch, pad, flip, cutout, height, width):
    """drawAugmentation for examples 0..count-1: (dy, dx, flip, cy, cx)."""
    stream = _stream_of(_AUGMENT_TAG, epoch)
    base = np.arange(count, dtype=np.uint64) * np.uint64(8)

    def bits(k):
        return philox_u32(seed, stream, base + np.uint64(k))

    zeros = np.zeros(count, dtype=np.int64)
    dy = _below(bits(0), 2 * pad + 1) if pad > 0 else zeros
    dx = _below(bits(1), 2 * pad + 1) if pad > 0 else zeros
    fl = (bits(2) >> np.uint32(31)).astype(np.int64) if flip else zeros
    if cutout > 0:
        cy, cx = _below(bits(3), height), _below(bits(4), width)
    else:
        cy = cx = np.full(count, -1, dtype=np.int64)
    return dy, dx, fl, cy, cx


# ---------------------------------------------------------------------------
# Recipes (codegen/Recipe.cpp) and the schedule (runtime/trainer/Schedule.cpp)
# ---------------------------------------------------------------------------

RECIPES = {
    "page24": dict(model="resnet9", epochs=24, lr_knots="0:0,5:0.4,24:0",
                   momentum=0.9, nesterov=True, wd=5e-4, label_smoothing=0.0,
                   ema=0.0, ema_every=1, tta=False, cutout=8, flip=True,
                   crop_pad=4, bias_lr_mult=1.0, bias_wd_mult=1.0),
    "bot10": dict(model="resnet9-bot", epochs=10,
                  lr_knots="0:0,2:1.024,8:0.1024,10:0.1024", momentum=0.9,
                  nesterov=True, wd=5e-4, label_smoothing=0.2, ema=0.99,
                  ema_every=5, tta=True, cutout=0, flip=True, crop_pad=4,
                  bias_lr_mult=64.0, bias_wd_mult=1.0 / 64.0),
}


class LrSchedule:
    def __init__(self, text):
        self.knots = []
        if not text.strip():
            raise UsageError("--lr-knots: empty; expected E0:LR0,E1:LR1,...")
        for knot in text.split(","):
            parts = knot.strip().split(":")
            if len(parts) != 2:
                raise UsageError(f"--lr-knots: knot '{knot}' is not EPOCH:LR")
            try:
                e, lr = float(parts[0]), float(parts[1])
            except ValueError:
                raise UsageError(f"--lr-knots: knot '{knot}' is not EPOCH:LR")
            if e < 0 or lr < 0 or not (math.isfinite(e) and math.isfinite(lr)):
                raise UsageError(f"--lr-knots: knot '{knot}' must be finite "
                                 "and non-negative")
            if self.knots and e < self.knots[-1][0]:
                raise UsageError(f"--lr-knots: knot '{knot}' is out of order")
            self.knots.append((e, lr))

    def at(self, epoch):
        k = self.knots
        if epoch < k[0][0]:
            return k[0][1]
        i = 0
        while i < len(k) and k[i][0] <= epoch:
            i += 1
        if i == len(k):
            return k[-1][1]
        (e0, l0), (e1, l1) = k[i - 1], k[i]
        return l0 + (epoch - e0) / (e1 - e0) * (l1 - l0)

    def at_step(self, step, steps_per_epoch):
        return self.at(step / steps_per_epoch)


# ---------------------------------------------------------------------------
# The model (models/ModelZoo.cpp)
# ---------------------------------------------------------------------------

def scale_width(channels, mult):
    return max(1, int(math.floor(channels * mult + 0.5)))  # llround, positive


class ConvBN(nn.Module):
    """conv_bn of cifar10-fast, optionally followed by a residual pair.

    resnet9:     conv -> BN -> ReLU [-> MaxPool 2]
    resnet9-bot: conv [-> MaxPool 2] -> BN(scale frozen at 1) -> CELU(0.3)
    with residual: x + res2(res1(x)).
    """

    def __init__(self, cin, cout, pool, bot, residual=False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
        if bot:
            self.bn.weight.requires_grad_(False)  # fcc: Constant ones
        self.pool, self.bot = pool, bot
        if residual:
            self.res1 = ConvBN(cout, cout, False, bot)
            self.res2 = ConvBN(cout, cout, False, bot)
        else:
            self.res1 = self.res2 = None

    def forward(self, x):
        x = self.conv(x)
        if self.pool and self.bot:
            x = F.max_pool2d(x, 2)
        x = self.bn(x)
        x = F.celu(x, 0.3) if self.bot else F.relu(x)
        if self.pool and not self.bot:
            x = F.max_pool2d(x, 2)
        if self.res1 is not None:
            x = x + self.res2(self.res1(x))
        return x


class ResNet9(nn.Module):
    def __init__(self, bot, width_mult=1.0, classes=10):
        super().__init__()
        w = [scale_width(c, width_mult) for c in (64, 128, 256, 512)]
        self.prep = ConvBN(3, w[0], False, bot)
        self.layer1 = ConvBN(w[0], w[1], True, bot, residual=True)
        self.layer2 = ConvBN(w[1], w[2], True, bot)
        self.layer3 = ConvBN(w[2], w[3], True, bot, residual=True)
        self.fc = nn.Linear(w[3], classes, bias=False)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        x = torch.amax(x, dim=(2, 3))  # MaxPool over the whole 4x4 image
        return self.fc(x) * 0.125


def build_model(name, width_mult):
    if name not in ("resnet9", "resnet9-bot"):
        raise UsageError(f"--model: unknown model '{name}' (resnet9, resnet9-bot)")
    return ResNet9(bot=name == "resnet9-bot", width_mult=width_mult)


def param_role(name, module_of):
    """fcc's parameter roles (ModelZoo.cpp): weight, bias, bn_scale, ..."""
    mod = module_of[name.rsplit(".", 1)[0]]
    leaf = name.rsplit(".", 1)[1]
    if isinstance(mod, nn.BatchNorm2d):
        return {"weight": "bn_scale", "bias": "bn_shift",
                "running_mean": "running_mean",
                "running_var": "running_var"}.get(leaf, "other")
    return "weight" if leaf == "weight" else "bias"


def param_groups(model, cfg):
    """fcc's optimizer groups: biases and BN parameters get the recipe's lr
    and wd multipliers (passes/BuildTraining.cpp isBiasGroup)."""
    modules = dict(model.named_modules())
    main, bias = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role = param_role(name, modules)
        (bias if role in ("bias", "bn_scale", "bn_shift") else main).append(p)
    return [dict(params=main, lr_mult=1.0, weight_decay=cfg["wd"]),
            dict(params=bias, lr_mult=cfg["bias_lr_mult"],
                 weight_decay=cfg["wd"] * cfg["bias_wd_mult"])]


def fan_in(mod):
    if isinstance(mod, nn.Conv2d):
        return mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]
    return mod.in_features


@torch.no_grad()
def initialise(model, mode, seed):
    """Parameters and running statistics as at the start of an fcc run."""
    modules = dict(model.named_modules())
    if mode == "torch":
        gen = torch.Generator().manual_seed(seed)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name.endswith("num_batches_tracked"):
            t.zero_()
            continue
        role = param_role(name, modules)
        if role in ("bn_scale", "running_var"):
            t.fill_(1.0)
        elif role in ("bn_shift", "running_mean"):
            t.zero_()
        else:
            mod = modules[name.rsplit(".", 1)[0]]
            fi = fan_in(mod)
            if mode == "fcc":
                v = fcc_uniform_init(name, t.numel(), fi, seed)
                t.copy_(torch.from_numpy(v).reshape(t.shape))
            else:
                bound = 1.0 / math.sqrt(fi)
                v = torch.rand(t.shape, generator=gen, dtype=torch.float64)
                t.copy_((2.0 * v - 1.0) * bound)


@torch.no_grad()
def load_initial_values(model, directory):
    """Parameters and running statistics from the "before" files of a
    --dump-step directory (fcc's or ours): start from exactly those values."""
    path = os.path.join(directory, "manifest.json")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"--init-from: cannot read {path}: {e}")
    state = dict(list(model.named_parameters()) + list(model.named_buffers()))
    loaded = set()
    for e in manifest.get("params", []):
        t = state.get(e.get("name"))
        if t is None or not t.is_floating_point():
            continue  # e.g. fcc's frozen BN scales (constants of 1 here too)
        v = np.fromfile(os.path.join(directory, e["before"]), dtype="<f4")
        if v.size != t.numel():
            raise UsageError(f"--init-from: '{e['name']}' has {v.size} values in "
                             f"{directory}, the model {t.numel()}")
        t.copy_(torch.from_numpy(v).reshape(t.shape))
        loaded.add(e["name"])
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and n not in loaded]
    if missing:
        raise UsageError(f"--init-from: {directory} lacks {len(missing)} "
                         f"parameter(s) of the model, e.g. '{missing[0]}'")


def state_tensors(model):
    """Every float tensor of the training state (parameters, running stats)."""
    return [t for n, t in list(model.named_parameters()) +
            list(model.named_buffers()) if t.is_floating_point()]


# ---------------------------------------------------------------------------
# Data (runtime/trainer/Data.cpp)
# ---------------------------------------------------------------------------

RECORD = 3073


def read_cifar(path):
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise UsageError(f"{path}: {raw.size} bytes is not a whole number of "
                         f"{RECORD}-byte records")
    rec = raw.reshape(-1, RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() >= 10:
        raise UsageError(f"{path}: labels outside 0-9")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def load_cifar(directory, train_limit, test_limit):
    d = directory
    if not any(os.path.isfile(os.path.join(d, f)) for f in
               ["test_batch.bin"] + [f"data_batch_{i}.bin" for i in range(1, 6)]):
        d = os.path.join(directory, "cifar-10-batches-bin")
    files = [os.path.join(d, f"data_batch_{i}.bin") for i in range(1, 6)]
    files = [f for f in files if os.path.isfile(f)]
    test = os.path.join(d, "test_batch.bin")
    if not files or not os.path.isfile(test):
        raise UsageError(f"--data: {directory} has no CIFAR-10 binary batches "
                         "(data_batch_N.bin and test_batch.bin)")
    parts = [read_cifar(f) for f in files]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = read_cifar(test)
    if train_limit:
        xtr, ytr = xtr[:train_limit], ytr[:train_limit]
    if test_limit:
        xte, yte = xte[:test_limit], yte[:test_limit]
    return d, files, xtr, ytr, xte, yte


def channel_statistics(images):
    """Data.cpp channelStatistics: exact integer sums, float32 results."""
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean, std = [], []
    for c in range(images.shape[1]):
        plane = images[:, c].astype(np.uint64)
        s = int(plane.sum())
        ss = int((plane * plane).sum())
        m = s / n
        var = float(ss * n - s * s) / (float(n) * float(n))
        sd = math.sqrt(var)
        mean.append(np.float32(m))
        std.append(np.float32(sd) if sd > 0 else np.float32(1.0))
    mean = np.array(mean, dtype=np.float32)
    inv_std = (np.float32(1.0) / np.array(std, dtype=np.float32)).astype(np.float32)
    return mean, inv_std


# ---------------------------------------------------------------------------
# Batches on the device (runtime/trainer/Augment.h order of operations)
# ---------------------------------------------------------------------------

def normalise(x_u8, mean, inv_std):
    return (x_u8.float() - mean.view(1, -1, 1, 1)) * inv_std.view(1, -1, 1, 1)


def train_batch(data_u8, idx, draws, mean, inv_std, pad, cutout, channels_last):
    """normalise -> reflect-pad + crop at (dy, dx) -> flip -> cutout."""
    dy, dx, fl, cy, cx = (d[idx] for d in draws)
    x = normalise(data_u8[idx], mean, inv_std)
    b, _, h, w = x.shape
    if pad > 0:
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy[:, None] + ar_h[None, :]
    cols = dx[:, None] + torch.where(fl[:, None] != 0, (w - 1) - ar_w[None, :],
                                     ar_w[None, :])
    bi = torch.arange(b, device=x.device)[:, None, None]
    x = x[bi, :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    x = x.permute(0, 3, 1, 2)  # NCHW view of NHWC memory (channels-last)
    if cutout > 0:
        y0 = (cy - cutout // 2)[:, None]
        x0 = (cx - cutout // 2)[:, None]
        in_y = (ar_h[None, :] >= y0) & (ar_h[None, :] < y0 + cutout)
        in_x = (ar_w[None, :] >= x0) & (ar_w[None, :] < x0 + cutout)
        mask = in_y[:, :, None] & in_x[:, None, :] & (cy >= 0)[:, None, None]
        x = x.masked_fill(mask[:, None], 0.0)
    if channels_last:
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

def table_header():
    return ("epoch  lr      train loss  train acc  test loss  test acc  "
            "epoch time  total time")


def table_row(r):
    return ("%5d  %-6.4f  %10.4f  %9.4f  %9.4f  %8.4f  %10s  %10s" % (
        r["epoch"], r["lr"], r["train_loss"], r["train_acc"], r["test_loss"],
        r["test_acc"], "%.1fs" % r["epoch_time_s"], "%.1fs" % r["total_time_s"]))


def json_line(r):
    def num(v):
        return json.dumps(float(v)) if math.isfinite(v) else "null"
    fields = [
        ("run", str(r["run"])), ("seed", str(r["seed"])),
        ("epoch", str(r["epoch"])), ("lr", num(r["lr"])),
        ("train_loss", num(r["train_loss"])), ("train_acc", num(r["train_acc"])),
        ("test_loss", num(r["test_loss"])), ("test_acc", num(r["test_acc"])),
        ("epoch_time_s", "%.6f" % r["epoch_time_s"]),
        ("eval_time_s", "%.6f" % r["eval_time_s"]),
        ("total_time_s", "%.6f" % r["total_time_s"]),
        ("train_images", str(r["train_images"])),
        ("test_images", str(r["test_images"])), ("steps", str(r["steps"])),
        ("skipped_steps", str(r["skipped_steps"])),
        ("loss_scale", num(r["loss_scale"])),
        ("images_per_s", "%.1f" % r["images_per_s"]),
    ]
    return "{" + ",".join(f'"{k}":{v}' for k, v in fields) + "}"


class Objective(nn.Module):
    """Loss (mean, label smoothing) and the number of correct predictions."""

    def __init__(self, model, label_smoothing):
        super().__init__()
        self.model = model
        self.ls = label_smoothing

    def forward(self, x, y):
        logits = self.model(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=self.ls)
        correct = (logits.argmax(dim=1) == y).sum()
        return loss, correct


class Trainer:
    def __init__(self, args, cfg, device):
        self.a, self.cfg, self.dev = args, cfg, device
        self.cuda = device.type == "cuda"
        self.channels_last = args.channels_last
        prec = args.precision
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(prec)
        self.model = build_model(cfg["model"], args.width_mult).to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema_model = copy.deepcopy(self.model) if cfg["ema"] > 0 else None
        self.objective = Objective(self.model, cfg["label_smoothing"])
        self.step_fn, self.eval_fn = self.objective, self.ema_model or self.model
        if args.compile:
            kw = {} if args.compile_mode == "default" else {"mode": args.compile_mode}
            self.step_fn = torch.compile(self.objective, **kw)
            self.eval_fn = torch.compile(self.ema_model or self.model, **kw)
        self.sched = LrSchedule(cfg["lr_knots"])
        self.groups = param_groups(self.model, cfg)

    def new_optimizer(self):
        c = self.cfg
        groups = [dict(g) for g in self.groups if g["params"]]
        kw = dict(lr=0.0, momentum=c["momentum"], nesterov=c["nesterov"] and
                  c["momentum"] > 0)
        if self.cuda:
            try:  # one kernel, and no host sync under the GradScaler
                return torch.optim.SGD(groups, fused=True, **kw)
            except (RuntimeError, TypeError, ValueError):
                pass
        return torch.optim.SGD(groups, foreach=self.cuda, **kw)

    def autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.dev.type, enabled=False)
        return torch.autocast(self.dev.type, dtype=self.amp_dtype)

    # -- state ---------------------------------------------------------------
    def reset(self, seed):
        initialise(self.model, self.a.init, seed)
        if self.a.init_from:
            load_initial_values(self.model, self.a.init_from)
        if self.ema_model is not None:
            with torch.no_grad():
                for e, t in zip(state_tensors(self.ema_model),
                                state_tensors(self.model)):
                    e.copy_(t)
        self.opt = self.new_optimizer()
        fp16 = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(
            self.dev.type, init_scale=self.a.loss_scale,
            growth_interval=self.a.loss_scale_window, enabled=fp16)
        self.step = 0

    # -- one step ------------------------------------------------------------
    def train_step(self, x, y, lr, sums):
        for g in self.opt.param_groups:
            g["lr"] = lr * g["lr_mult"]
        with self.autocast():
            loss, correct = self.step_fn(x, y)
        self.scaler.scale(loss).backward()
        if self.scaler.is_enabled():
            before = self.scaler._scale.clone()
            self.scaler.step(self.opt)
            self.scaler.update()
            sums[2] += (self.scaler._scale < before).float().sum()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sums[0] += loss.detach().float() * y.shape[0]
        sums[1] += correct
        c = self.cfg
        self.step += 1
        if self.ema_model is not None and self.step % c["ema_every"] == 0:
            weight = 1.0 - c["ema"] ** c["ema_every"]
            with torch.no_grad():
                torch._foreach_lerp_(state_tensors(self.ema_model),
                                     state_tensors(self.model), weight)

    # -- evaluation ----------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, xte, yte, limit_batches=None):
        m = self.ema_model or self.model
        m.eval()
        b, n = self.a.batch, xte.shape[0]
        loss_sum = torch.zeros((), device=self.dev)
        correct = torch.zeros((), device=self.dev, dtype=torch.int64)
        ls = self.cfg["label_smoothing"]
        for k, first in enumerate(range(0, n, b)):
            if limit_batches is not None and k >= limit_batches:
                break
            valid = min(b, n - first)
            idx = torch.arange(first, first + b, device=self.dev).clamp_(max=n - 1)
            x, y = xte[idx], yte[idx]
            with self.autocast():
                logits = self.eval_fn(x).float()
                if self.cfg["tta"]:
                    xf = torch.flip(x, dims=(3,))
                    if self.channels_last:
                        xf = xf.contiguous(memory_format=torch.channels_last)
                    logits = 0.5 * (logits + self.eval_fn(xf).float())
            rows = F.cross_entropy(logits, y, label_smoothing=ls, reduction="none")
            loss_sum += rows[:valid].sum()
            correct += (logits[:valid].argmax(dim=1) == y[:valid]).sum()
        m.train()
        return loss_sum, correct


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epoch_draws(tr, count, seed, epoch, gen):
    """(order, (dy, dx, flip, cy, cx)) for one epoch, on the device."""
    c, dev = tr.cfg, tr.dev
    pad = 0 if tr.a.no_crop else c["crop_pad"]
    if tr.a.rng == "fcc":
        order = torch.from_numpy(fcc_epoch_order(count, seed, epoch)).to(dev)
        d = fcc_augment_draws(count, seed, epoch, pad, c["flip"], c["cutout"], 32, 32)
        draws = tuple(torch.from_numpy(v).to(dev, non_blocking=True) for v in d)
        return order, draws
    order = torch.randperm(count, generator=gen, device=dev)

    def ints(hi):
        return torch.randint(0, hi, (count,), generator=gen, device=dev)

    zeros = torch.zeros(count, dtype=torch.int64, device=dev)
    dy = ints(2 * pad + 1) if pad > 0 else zeros
    dx = ints(2 * pad + 1) if pad > 0 else zeros
    fl = ints(2) if c["flip"] else zeros
    if c["cutout"] > 0:
        cy, cx = ints(32), ints(32)
    else:
        cy = cx = torch.full((count,), -1, dtype=torch.int64, device=dev)
    return order, (dy, dx, fl, cy, cx)


def run_training(args, cfg, device):
    t_data = time.perf_counter()
    d, files, xtr, ytr, xte, yte = load_cifar(args.data, args.train_limit,
                                              args.test_limit)
    b = args.batch
    if xtr.shape[0] < b:
        raise UsageError(f"{args.data}: {xtr.shape[0]} training images do not "
                         f"fill one batch of {b}")
    mean_np, inv_std_np = channel_statistics(xtr)
    mean = torch.from_numpy(mean_np).to(device)
    inv_std = torch.from_numpy(inv_std_np).to(device)
    xtr_d = torch.from_numpy(np.ascontiguousarray(xtr)).to(device)
    ytr_d = torch.from_numpy(ytr).to(device)
    xte_d = normalise(torch.from_numpy(np.ascontiguousarray(xte)).to(device),
                      mean, inv_std)
    if args.channels_last:
        xte_d = xte_d.contiguous(memory_format=torch.channels_last)
    yte_d = torch.from_numpy(yte).to(device)
    sync(device)
    data_s = time.perf_counter() - t_data

    tr = Trainer(args, cfg, device)
    count, steps_per_epoch = xtr.shape[0], xtr.shape[0] // b
    pad = 0 if args.no_crop else cfg["crop_pad"]
    mode = "compile" + ("" if args.compile_mode == "default"
                        else f" ({args.compile_mode})") if args.compile else "eager"
    dev_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else "cpu (%d threads)" % torch.get_num_threads())
    say = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    n_params = sum(p.numel() for p in tr.model.parameters() if p.requires_grad)
    say(f"model     {cfg['model']} width x{args.width_mult:g}  ({n_params:,} "
        f"trainable parameters, PyTorch {torch.__version__}, {mode})")
    say(f"target    {device.type} on {dev_name}, {args.precision}"
        + (f" (autocast, dynamic loss scaling from {args.loss_scale:g}, window "
           f"{args.loss_scale_window})" if args.precision == "fp16" else
           " (autocast)" if args.precision == "bf16" else "")
        + f", batch {b}, {'channels-last' if args.channels_last else 'NCHW'}")
    say(f"recipe    {args.recipe}: epochs {cfg['epochs']}, lr-knots "
        f"{cfg['lr_knots']}, momentum {cfg['momentum']:g}"
        f"{' (nesterov)' if cfg['nesterov'] else ''}, wd {cfg['wd']:g}, "
        f"label-smoothing {cfg['label_smoothing']:g}, ema "
        + (f"{cfg['ema']:g} every {cfg['ema_every']}" if cfg["ema"] > 0 else "off")
        + f", tta {'on' if cfg['tta'] else 'off'}, bias lr x{cfg['bias_lr_mult']:g}"
        f" wd x{cfg['bias_wd_mult']:g}")
    say("augment   " + (f"reflect-pad {pad} + random crop" if pad else "no crop")
        + (", random flip" if cfg["flip"] else ", no flip")
        + (f", cutout {cfg['cutout']}" if cfg["cutout"] else ", no cutout")
        + f"; random draws: {args.rng}; init: "
        + (f"from {args.init_from}" if args.init_from else args.init))
    say(f"data      {d} ({len(files)} training file(s)): {count} train images "
        f"({steps_per_epoch} steps/epoch, {count - steps_per_epoch * b} left "
        f"over per epoch), {xte.shape[0]} test images")

    metrics = open(args.metrics, "w") if args.metrics else None
    summaries = []
    warmup_s = 0.0
    startup_s = None
    for run in range(1, args.runs + 1):
        seed = args.seed + run - 1
        gen = None
        if args.rng == "torch":
            gen = torch.Generator(device=device)
            gen.manual_seed(seed)
        if run == 1 and args.warmup_steps > 0:
            # cuDNN autotuning, torch.compile, allocator growth: on the real
            # model and pipeline, then undone by the reset below.
            t_w = time.perf_counter()
            tr.reset(seed)
            order, draws = epoch_draws(tr, count, seed, 0, gen)
            sums = torch.zeros(3, device=device)
            for s in range(args.warmup_steps):
                k = s % steps_per_epoch
                idx = order[k * b:(k + 1) * b]
                x = train_batch(xtr_d, idx, draws, mean, inv_std, pad,
                                cfg["cutout"], args.channels_last)
                tr.train_step(x, ytr_d[idx], tr.sched.at_step(s, steps_per_epoch), sums)
            tr.evaluate(xte_d, yte_d, limit_batches=1)
            sync(device)
            warmup_s = time.perf_counter() - t_w
            if gen is not None:
                gen.manual_seed(seed)
        tr.reset(seed)
        sync(device)
        if startup_s is None:
            startup_s = time.perf_counter() - PROCESS_START
            warm = (f"warm-up of {args.warmup_steps} steps + 1 evaluation batch "
                    f"{warmup_s:.2f} s, undone" if args.warmup_steps > 0
                    else "no warm-up")
            say(f"start-up  {startup_s:.2f} s before the first timed step "
                f"(data {data_s:.2f} s, {warm})")
        if args.runs > 1:
            say(f"run {run} of {args.runs} (seed {seed})")
        say(table_header())
        total, train_images = 0.0, 0
        rec = None
        for epoch in range(1, cfg["epochs"] + 1):
            sync(device)
            t0 = time.perf_counter()
            order, draws = epoch_draws(tr, count, seed, epoch - 1, gen)
            sums = torch.zeros(3, device=device)
            for s in range(steps_per_epoch):
                idx = order[s * b:(s + 1) * b]
                x = train_batch(xtr_d, idx, draws, mean, inv_std, pad,
                                cfg["cutout"], args.channels_last)
                lr = tr.sched.at_step(tr.step, steps_per_epoch)
                tr.train_step(x, ytr_d[idx], lr, sums)
            sync(device)
            epoch_time = time.perf_counter() - t0
            total += epoch_time
            loss_sum, correct, skipped = (float(v) for v in sums.tolist())
            trained = steps_per_epoch * b
            train_images += trained
            t1 = time.perf_counter()
            tl, tc = tr.evaluate(xte_d, yte_d)
            test_loss, test_correct = float(tl), int(tc)
            eval_time = time.perf_counter() - t1
            rec = dict(run=run, seed=seed, epoch=epoch,
                       lr=tr.sched.at_step(tr.step, steps_per_epoch),
                       train_loss=loss_sum / trained, train_acc=correct / trained,
                       test_loss=test_loss / xte.shape[0],
                       test_acc=test_correct / xte.shape[0],
                       epoch_time_s=epoch_time, eval_time_s=eval_time,
                       total_time_s=total, train_images=trained,
                       test_images=int(xte.shape[0]), steps=steps_per_epoch,
                       skipped_steps=int(skipped),
                       loss_scale=tr.scaler.get_scale() if tr.scaler.is_enabled() else 1.0,
                       images_per_s=trained / epoch_time if epoch_time > 0 else 0.0)
            say(table_row(rec))
            if metrics:
                metrics.write(json_line(rec) + "\n")
                metrics.flush()
            if not math.isfinite(rec["train_loss"]):
                print(f"torch_reference.py: error: training diverged in epoch "
                      f"{epoch}: the training loss is not finite", file=sys.stderr)
                return EXIT_DIVERGED
        ips = train_images / total if total > 0 else 0.0
        print("run %d (seed %d): test acc %.4f, test loss %.4f; %d epoch%s, %.2f s "
              "of training (setup and evaluation excluded), %.0f images/s" % (
                  run, seed, rec["test_acc"], rec["test_loss"], cfg["epochs"],
                  "" if cfg["epochs"] == 1 else "s", total, ips), flush=True)
        summaries.append(dict(run=run, seed=seed, test_acc=rec["test_acc"],
                              test_loss=rec["test_loss"], train_time_s=total,
                              images_per_s=ips, train_images=train_images))
    if metrics:
        metrics.close()
    accs = [s["test_acc"] for s in summaries]
    if args.runs > 1:
        print("%d runs (seeds %d..%d): final test acc min %.4f  median %.4f  "
              "mean %.4f  max %.4f; mean training time %.2f s" % (
                  len(accs), args.seed, args.seed + args.runs - 1, min(accs),
                  float(np.median(accs)), float(np.mean(accs)), max(accs),
                  float(np.mean([s["train_time_s"] for s in summaries]))))
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(dict(system="pytorch-" + ("compile" if args.compile else "eager"),
                           torch=torch.__version__, device=dev_name,
                           precision=args.precision, batch=b, model=cfg["model"],
                           recipe=args.recipe, epochs=cfg["epochs"],
                           startup_s=startup_s, warmup_s=warmup_s, data_s=data_s,
                           wall_s=time.perf_counter() - PROCESS_START,
                           runs=summaries), f, indent=1)
            f.write("\n")
    return EXIT_OK


# ---------------------------------------------------------------------------
# --dump-step: one training step, written like fcc trainers' --dump-step
# ---------------------------------------------------------------------------

def run_dump_step(args, cfg, device):
    _, _, xtr, ytr, _, _ = load_cifar(args.data, args.train_limit, args.test_limit)
    b = args.batch
    if xtr.shape[0] < b:
        raise UsageError(f"{args.data}: fewer than {b} training images")
    dtype = torch.float64 if args.dump_dtype == "float64" else torch.float32
    mean, inv_std = (torch.from_numpy(v).to(device) for v in channel_statistics(xtr))
    x = normalise(torch.from_numpy(np.ascontiguousarray(xtr[:b])).to(device),
                  mean, inv_std).to(dtype)
    y = torch.from_numpy(ytr[:b]).to(device)
    model = build_model(cfg["model"], args.width_mult)
    initialise(model, args.init, args.seed)  # in float32, as fcc
    if args.init_from:
        load_initial_values(model, args.init_from)
    model = model.to(device=device, dtype=dtype)
    modules = dict(model.named_modules())
    # Trainable parameters and running statistics (a frozen BN scale is a
    # constant in fcc, not a parameter).
    named = [(n, t) for n, t in model.named_parameters() if t.requires_grad]
    named += [(n, t) for n, t in model.named_buffers() if t.is_floating_point()]
    before = {n: t.detach().clone() for n, t in named}
    lr = LrSchedule(cfg["lr_knots"]).at_step(0, 1)
    groups = [dict(g) for g in param_groups(model, cfg) if g["params"]]
    for g in groups:
        g["lr"] = lr * g["lr_mult"]
    opt = torch.optim.SGD(groups, lr=lr, momentum=cfg["momentum"],
                          nesterov=cfg["nesterov"] and cfg["momentum"] > 0)
    model.train()
    logits = model(x)
    loss = F.cross_entropy(logits, y, label_smoothing=cfg["label_smoothing"])
    correct = int((logits.argmax(1) == y).sum())
    loss.backward()
    opt.step()
    os.makedirs(args.dump_step, exist_ok=True)
    entries = []
    for k, (n, t) in enumerate(named):
        e = dict(name=n, shape=list(t.shape), before=f"p{k}.before.f32",
                 after=f"p{k}.after.f32", trainable=bool(t.requires_grad),
                 role=param_role(n, modules))
        tb, ta = before[n], t.detach()
        tb.float().cpu().numpy().astype("<f4").tofile(os.path.join(args.dump_step, e["before"]))
        ta.float().cpu().numpy().astype("<f4").tofile(os.path.join(args.dump_step, e["after"]))
        if t.requires_grad and lr > 0:
            # The implied gradient at full precision (before - after) / lr,
            # so that float32 rounding of `after` does not limit the check.
            e["grad"] = f"p{k}.grad.f32"
            ((tb - ta) / lr).float().cpu().numpy().astype("<f4").tofile(
                os.path.join(args.dump_step, e["grad"]))
        entries.append(e)
    manifest = dict(loss=float(loss.detach()), correct=correct, lr=lr, params=entries,
                    producer="bench/torch_reference.py", dtype=args.dump_dtype,
                    device=str(device), model=cfg["model"], recipe=args.recipe,
                    seed=args.seed, batch=b)
    with open(os.path.join(args.dump_step, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"dump-step: {len(entries)} tensors, loss {float(loss.detach()):.6f}, correct "
          f"{correct}/{b}, lr {lr:g} ({args.dump_dtype} on {device}) -> "
          f"{args.dump_step}")
    return EXIT_OK


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(
        description="PyTorch reference of fcc's ResNet9 trainers (same model, "
                    "recipe, data pipeline, metrics).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="CIFAR-10 binary directory")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="bot10")
    p.add_argument("--model", choices=["resnet9", "resnet9-bot"],
                   help="default: the recipe's (page24: resnet9, bot10: resnet9-bot)")
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr-knots")
    p.add_argument("--momentum", type=float)
    p.add_argument("--nesterov", dest="nesterov", action="store_true", default=None)
    p.add_argument("--no-nesterov", dest="nesterov", action="store_false")
    p.add_argument("--wd", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--ema", type=float, help="per-step EMA decay; 0 = off")
    p.add_argument("--ema-every", type=int)
    p.add_argument("--tta", dest="tta", action="store_true", default=None)
    p.add_argument("--no-tta", dest="tta", action="store_false")
    p.add_argument("--cutout", type=int)
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--no-crop", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int, default=0, help="0 = all")
    p.add_argument("--test-limit", type=int, default=0, help="0 = all")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--metrics", help="JSON lines, one object per epoch (fcc's keys)")
    p.add_argument("--summary", help="one JSON object: start-up, times, accuracy")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--precision", choices=["fp16", "bf16", "fp32"],
                   help="default: fp16 on CUDA, fp32 on the CPU")
    p.add_argument("--loss-scale", type=float, default=65536.0)
    p.add_argument("--loss-scale-window", type=int, default=2000)
    p.add_argument("--compile", action="store_true", help="torch.compile")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode (default, reduce-overhead, "
                        "max-autotune, max-autotune-no-cudagraphs)")
    p.add_argument("--channels-last", dest="channels_last", action="store_true",
                   default=None, help="default: on for CUDA")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--init", choices=["fcc", "torch"], default="fcc",
                   help="fcc: bit-identical to fcc trainers' initial weights")
    p.add_argument("--init-from", metavar="DUMP_DIR",
                   help="start from the \"before\" values of a --dump-step "
                        "directory (e.g. an fcc trainer's) instead of --init")
    p.add_argument("--rng", choices=["torch", "fcc"], default="torch",
                   help="shuffle/augmentation draws: device generator, or "
                        "fcc's Philox streams (the fcc trainer's exact batches)")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="untimed steps before the run, then undone (default: "
                        "3, 5 with --compile; 0 on the CPU)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = default")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--dump-step", metavar="DIR",
                   help="one step on the first --batch training images (no "
                        "augmentation), write DIR/manifest.json like fcc's "
                        "--dump-step, and exit")
    p.add_argument("--dump-dtype", choices=["float32", "float64"], default="float64")
    a = p.parse_args(argv)

    cfg = dict(RECIPES[a.recipe])
    for key, val in [("model", a.model), ("epochs", a.epochs),
                     ("lr_knots", a.lr_knots), ("momentum", a.momentum),
                     ("nesterov", a.nesterov), ("wd", a.wd),
                     ("label_smoothing", a.label_smoothing), ("ema", a.ema),
                     ("ema_every", a.ema_every), ("tta", a.tta),
                     ("cutout", a.cutout)]:
        if val is not None:
            cfg[key] = val
    if a.no_flip:
        cfg["flip"] = False
    if a.batch < 1 or cfg["epochs"] < 1 or a.runs < 1 or cfg["ema_every"] < 1:
        raise UsageError("--batch, --epochs, --runs and --ema-every must be >= 1")
    if not 0 <= cfg["ema"] < 1 or not 0 <= cfg["momentum"] < 1:
        raise UsageError("--ema and --momentum must be in [0, 1)")
    if not 0 <= cfg["label_smoothing"] < 1 or cfg["wd"] < 0:
        raise UsageError("--label-smoothing must be in [0, 1), --wd >= 0")
    if not 0 <= cfg["cutout"] <= 32:
        raise UsageError("--cutout must be between 0 and 32")
    LrSchedule(cfg["lr_knots"])  # validates
    return a, cfg


def main(argv=None):
    try:
        args, cfg = parse_args(argv)
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            print("torch_reference.py: error: no CUDA device (torch "
                  f"{torch.__version__}); use --device cpu", file=sys.stderr)
            return EXIT_NO_DEVICE
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        cuda = device.type == "cuda"
        if args.precision is None:
            args.precision = "fp16" if cuda else "fp32"
        if args.channels_last is None:
            args.channels_last = cuda
        if args.warmup_steps is None:
            args.warmup_steps = (5 if args.compile else 3) if cuda else 0
        if cuda:
            torch.backends.cudnn.benchmark = True
            # fp32 means fp32 (fcc's fp32 trainers do not use TF32)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        if args.dump_step:
            return run_dump_step(args, cfg, device)
        return run_training(args, cfg, device)
    except UsageError as e:
        print(f"torch_reference.py: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
