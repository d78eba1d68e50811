#!/usr/bin/env python3
"""Fused batch norm (bnorm.torch.BatchNormAct2d) against the unfused sequences.

Per shape of docs/performance.md's table (NCHW and channels_last, float32),
training forward + backward of
  fused        BatchNormAct2d: act(bn(x) [+ r]) in one pass, mask read off y
  bnorm+torch  bnorm.torch.BatchNorm2d, then torch's add and relu
  torch        torch.nn.BatchNorm2d, then torch's add and relu
for BN+ReLU and BN+add+ReLU; then a whole ResNet-18 training step with
bnorm.torch.fuse against torch's stock model (and one whose blocks' first
fused layers use save_output=True with leaky_relu of slope 0.01, the
InPlace-ABN configuration: a different network, timed beside the others),
and the bytes autograd keeps for backward (saved-tensor hooks, each storage
once) for the three.

Byte model (bytes moved per element, b = element size; r: the residual):
  torch / bnorm BN, then torch's ReLU (and add):
    forward   BN reads x twice (statistics, normalize) and writes z: 3b;
              add reads z, r, writes: +3b; ReLU reads, writes y: +2b
    backward  ReLU reads dy, y, writes dz: 3b; BN reads dz, x twice
              (reduction, dx pass) and writes dx: 5b
    total     BN+ReLU 13b, BN+add+ReLU 16b
  fused:
    forward   reads x twice, r once, writes y: 3b (+1b with r)
    backward  reads dy, y, x in the reduction and again in the dx pass,
              writes dx: 7b; with r the reduction writes dresidual = dz
              and the dx pass reads dz, x: also 7b
    total     BN+ReLU 10b, BN+add+ReLU 11b
(The 2-D statistics and dx passes reread from cache where a unit fits it, as
bnorm's own batch norm does, so the measured traffic can be lower.)
Each figure is the median of repeats in which the implementations take turns.
No assertion: the machine is a shared 2-core box, read the figures with
their noise in mind.

  PYTHONPATH=build/release/python /usr/bin/python3 bench/torch/bench_fused.py [--quick] [--markdown FILE]
"""

import argparse
import copy
import statistics
import time

import torch
import torchvision

import bnorm.torch as bt

SHAPES = [(32, 64, 56, 56), (32, 256, 14, 14), (64, 512, 7, 7), (8, 32, 128, 128)]


def median_times(functions, repeats, warmup):
    for f in functions:
        for _ in range(warmup):
            f()
    samples = [[] for _ in functions]
    for _ in range(repeats):
        for i, f in enumerate(functions):
            start = time.perf_counter()
            f()
            samples[i].append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]


def layer_step(kind, shape, memory_format, residual):
    torch.manual_seed(0)
    x = torch.randn(shape).to(memory_format=memory_format).requires_grad_()
    r = torch.randn(shape).to(memory_format=memory_format) if residual else None
    dy = torch.randn(shape).to(memory_format=memory_format)
    c = shape[1]
    if kind == "fused":
        m = bt.BatchNormAct2d(c)

        def run():
            y = m(x, r)
            y.backward(dy)
    else:
        m = bt.BatchNorm2d(c) if kind == "bnorm+torch" else torch.nn.BatchNorm2d(c)

        def run():
            z = m(x)
            if r is not None:
                z = z + r
            torch.relu(z).backward(dy)
    return run


def saved_bytes(model, x):
    storages = {}

    def pack(t):
        storages[t.storage().data_ptr()] = t.storage().size() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).logsumexp(1).mean()
    del loss
    return sum(storages.values())


def abn_model(stock):
    """fuse(), then every fused layer switched to leaky_relu(0.01) + save_output."""
    fused = bt.fuse(copy.deepcopy(stock))
    for name, m in list(fused.named_modules()):
        if isinstance(m, bt.BatchNormAct2d) and name.endswith("bn1"):
            m.act, m.negative_slope, m.save_output = "leaky_relu", 0.01, True
    return fused


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    repeats, warmup = (5, 1) if args.quick else (15, 3)
    lines = ["| shape | layout | op | fused ms | bnorm BN + torch ms | torch ms | "
             "vs bnorm+torch | vs torch |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    threads = torch.get_num_threads()
    for shape in SHAPES[:2] if args.quick else SHAPES:
        for fmt, fmt_name in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "NHWC")):
            for residual in (False, True):
                runs = [layer_step(k, shape, fmt, residual)
                        for k in ("fused", "bnorm+torch", "torch")]
                t = median_times(runs, repeats, warmup)
                op = "BN+add+ReLU" if residual else "BN+ReLU"
                lines.append(f"| {shape} | {fmt_name} | {op} fwd+bwd | {t[0] * 1e3:.2f} | "
                             f"{t[1] * 1e3:.2f} | {t[2] * 1e3:.2f} | {t[1] / t[0]:.2f}x | "
                             f"{t[2] / t[0]:.2f}x |")
                print(lines[-1], flush=True)
    lines += ["", "| model | layout | stock ms | fuse() ms | fuse() + save_output ms | "
              "fuse() speed-up | + save_output speed-up |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    torch.manual_seed(0)
    batch = 8 if args.quick else 16
    x = torch.randn(batch, 3, 112, 112)
    target = torch.randint(0, 1000, (batch,))
    for fmt, fmt_name in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "NHWC")):
        stock = torchvision.models.resnet18().to(memory_format=fmt)
        fused = bt.fuse(copy.deepcopy(stock)).to(memory_format=fmt)
        abn = abn_model(stock).to(memory_format=fmt)
        xf = x.to(memory_format=fmt)

        def step(model):
            def run():
                model.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model.train()(xf), target).backward()
            return run
        t = median_times([step(stock), step(fused), step(abn)], max(3, repeats // 3), 1)
        lines.append(f"| ResNet-18 train step, batch {batch}, 112x112 | {fmt_name} | "
                     f"{t[0] * 1e3:.1f} | {t[1] * 1e3:.1f} | {t[2] * 1e3:.1f} | "
                     f"{t[0] / t[1]:.2f}x | {t[0] / t[2]:.2f}x |")
        print(lines[-1], flush=True)
    stock = torchvision.models.resnet18().train()
    sizes = [("stock", saved_bytes(stock, x)), ("fuse()", saved_bytes(bt.fuse(copy.deepcopy(stock)), x)),
             ("fuse() + save_output on the blocks' first BN (leaky_relu 0.01)",
              saved_bytes(abn_model(stock), x))]
    lines += ["", "| ResNet-18, batch %d, 112x112 | bytes saved for backward | vs stock |" % batch,
              "| --- | ---: | ---: |"]
    for name, b in sizes:
        lines.append(f"| {name} | {b / 2**20:.1f} MiB | {b / sizes[0][1]:.3f} |")
        print(lines[-1], flush=True)
    lines.append(f"\n(torch {torch.__version__}, {threads} threads)")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
