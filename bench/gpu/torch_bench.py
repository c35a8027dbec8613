#!/usr/bin/python3
"""PyTorch on the GPU with mfres's networks (bench/resnet_torch.py's
definitions), the baseline of bench/gpu/run.sh.

Per precision (fp32: TF32 off; tf32: TF32 on; bf16: torch.autocast bfloat16),
per implementation (eager, torch.compile with the default mode) and per pass
(train: forward, cross-entropy, backward, SGD momentum 0.9 wd 1e-4; infer:
model.eval() under torch.no_grad()), on batch-B slices of synthetic uint8
CIFAR-shaped images held on the device and normalised there, channels_last.
Warm-up steps (compilation included) are not timed; the timed steps run
without a host sync between them, with one torch.cuda.synchronize() at each
end. Each measurement prints one line as soon as it is done:
  result model=resnet20 mode=train precision=fp32 impl=torch-eager images_per_s=12345.6 ms_per_step=10.37 steps=50
and a failure (a compile error, out of memory) one line, then the next runs:
  error model=resnet20 mode=train precision=bf16 impl=torch-compile: <the exception, one line>
compile lines add compile_s= (the warm-up's wall time, compilation included).
Run with the machine's own python3 (/usr/bin/python3 where python3-torch is).
"""
import argparse
import contextlib
import os
import re
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from resnet_torch import ResNet  # noqa: E402  (bench/resnet_torch.py: the CPU comparison's twin of src/models/arch.c)


def build(name, block, in_c, classes):
    """resnetN (block postact|preact|bottleneck) or resnextN-CxDd (block postact|preact), as mfres --model."""
    m = re.fullmatch(r"resnext(\d+)-(\d+)x(\d+)d", name)
    if m:
        if block == "bottleneck":
            raise SystemExit("torch_bench: a ResNeXt takes --block postact or preact")
        depth, card, gw = (int(v) for v in m.groups())
        return ResNet(depth, in_c, classes, block == "preact", 64, False, (card, gw))
    m = re.fullmatch(r"resnet(\d+)", name)
    if not m:
        raise SystemExit(f"torch_bench: --model expects resnetN or resnextN-CxDd, got '{name}'")
    depth = int(m.group(1))
    if (depth - 2) % (9 if block == "bottleneck" else 6):
        raise SystemExit(f"torch_bench: depth {depth} does not fit --block {block} (6n+2 basic, 9n+2 bottleneck)")
    return ResNet(depth, in_c, classes, block != "postact", 16, block == "bottleneck", None)


def set_precision(dev, precision):
    """TF32 on only for tf32; the autocast context for bf16 (else a no-op context)."""
    if dev.type == "cuda":
        tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    if precision == "bf16":
        return lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure(a, dev, data, labels, precision, impl, mode, out):
    """One (precision, impl, pass): a fresh model, warm-up, timed steps; prints its line."""
    tag = f"model={a.model} mode={mode} precision={precision} impl=torch-{impl}"
    try:
        torch.manual_seed(0)
        autocast = set_precision(dev, precision)
        model = build(a.model, a.block, data.shape[1], a.classes).to(dev, memory_format=torch.channels_last)
        net = torch.compile(model) if impl == "compile" else model
        opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=1e-4)
        mean = torch.full((1, data.shape[1], 1, 1), 0.5, device=dev)
        std = torch.full((1, data.shape[1], 1, 1), 0.25, device=dev)
        nb = data.shape[0] // a.batch

        def batch(i):
            j = i % nb
            x = data[j * a.batch:(j + 1) * a.batch].float().div_(255).sub_(mean).div_(std)
            return x.contiguous(memory_format=torch.channels_last), labels[j * a.batch:(j + 1) * a.batch]

        if mode == "train":
            model.train()

            def step(i):
                x, y = batch(i)
                opt.zero_grad(set_to_none=True)
                with autocast():
                    loss = F.cross_entropy(net(x), y)
                loss.backward()
                opt.step()
        else:
            model.eval()

            def step(i):
                x, _ = batch(i)
                with torch.no_grad(), autocast():
                    net(x)

        warmup = max(a.warmup, 3) if impl == "compile" else a.warmup
        t0 = time.perf_counter()
        for i in range(warmup):
            step(i)
        sync(dev)
        t_warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(a.steps):
            step(warmup + i)
        sync(dev)
        t = time.perf_counter() - t0
        extra = f" compile_s={t_warm:.1f}" if impl == "compile" else ""
        print(f"result {tag} images_per_s={a.steps * a.batch / t:.1f} ms_per_step={1e3 * t / a.steps:.2f} "
              f"steps={a.steps}{extra}", file=out, flush=True)
    except Exception as e:  # a compile failure or OOM is reported, and the next measurement runs
        msg = " ".join(f"{type(e).__name__}: {e}".split())[:400]
        print(f"error {tag}: {msg}", file=out, flush=True)
    finally:
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default="resnet20", help="resnetN or resnextN-CxDd, as mfres --model [resnet20]")
    p.add_argument("--block", choices=["postact", "preact", "bottleneck"], default="postact")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--input", default="3x32x32", help="CxHxW [3x32x32]")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, tf32, bf16 [fp32,bf16]")
    p.add_argument("--impls", default="eager,compile", help="comma-separated: eager, compile [eager,compile]")
    p.add_argument("--modes", default="train,infer", help="comma-separated: train, infer [train,infer]")
    p.add_argument("--steps", type=int, default=50, help="timed steps per measurement [50]")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (at least 3 with compile) [5]")
    p.add_argument("--lr", type=float, default=0.001, help="small: random labels stay finite [0.001]")
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test of this script [cuda]")
    p.add_argument("--no-cudnn-benchmark", action="store_true",
                   help="fixed cuDNN algorithms (default: cudnn.benchmark on, PyTorch's fastest setting)")
    a = p.parse_args()
    precisions, impls, modes = a.precisions.split(","), a.impls.split(","), a.modes.split(",")
    for vals, ok, flag in ((precisions, {"fp32", "tf32", "bf16"}, "--precisions"),
                           (impls, {"eager", "compile"}, "--impls"), (modes, {"train", "infer"}, "--modes")):
        if not set(vals) <= ok:
            p.error(f"{flag} takes {', '.join(sorted(ok))}; got {','.join(vals)}")
    dev = torch.device(a.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            print("error torch: torch.cuda.is_available() is False", flush=True)
            return 1
        torch.backends.cudnn.benchmark = not a.no_cudnn_benchmark
        print(f"# torch {torch.__version__} CUDA {torch.version.cuda} cuDNN {torch.backends.cudnn.version()} "
              f"on {torch.cuda.get_device_name(dev)}; cudnn.benchmark={torch.backends.cudnn.benchmark}", flush=True)
    else:
        print(f"# torch {torch.__version__} on {dev}", flush=True)
    c, h, w = (int(v) for v in a.input.split("x"))
    gen = torch.Generator(device="cpu").manual_seed(1)
    n = 8 * a.batch  # 8 distinct batches, cycled
    data = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=gen).to(dev)
    labels = torch.randint(0, a.classes, (n,), generator=gen).to(dev)
    # eager before compile (a compile that hangs or dies leaves the eager numbers printed)
    for impl in impls:
        for precision in precisions:
            for mode in modes:
                measure(a, dev, data, labels, precision, impl, mode, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
