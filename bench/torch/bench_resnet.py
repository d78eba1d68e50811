#!/usr/bin/env python3
"""bnorm.torch against torch.nn's batch norm, in one process, taking turns.

Times torchvision's ResNet-18 with torch's BatchNorm2d and with bnorm's
(bnorm.torch.convert of the same model): a training step (forward, loss,
backward) and an eval forward under no_grad, NCHW and channels_last, 1 and 2
threads; then single layers alone (8x64x7x7 and 32x64x56x56), eval forward
and training forward+backward; then the profiler's time for the batch-norm
operators inside a training step. Each figure is the median of repeats in
which the two implementations alternate; "speed-up" is torch's time over
bnorm's (above 1: bnorm faster). No assertion: the machines are shared, so
read the figures with their noise in mind.

Run from the build tree:
  PYTHONPATH=build/release/python /usr/bin/python3 bench/torch/bench_resnet.py [--quick] [--markdown FILE]
"""

import argparse
import copy
import statistics
import time

import torch
import torchvision

import bnorm.torch as bt


def median_times(functions, repeats, warmup):
    """Median seconds per call of each function, the functions taking turns."""
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


def models(memory_format):
    torch.manual_seed(0)
    stock = torchvision.models.resnet18(num_classes=1000).to(memory_format=memory_format)
    converted = bt.convert(copy.deepcopy(stock)).to(memory_format=memory_format)
    return stock, converted


def train_step(model, x, target):
    def step():
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model.train()(x), target)
        loss.backward()
    return step


def eval_forward(model, x):
    def forward():
        with torch.no_grad():
            model.eval()(x)
    return forward


def bn_profile(model, x, target, names):
    """Milliseconds the profiler gives to the named batch-norm ops in one training step,
    and the step's total."""
    step = train_step(model, x, target)
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        step()
        total = time.perf_counter() - start
    bn = sum(e.cpu_time_total for e in prof.key_averages() if e.key in names) / 1e3
    return bn, total * 1e3


TORCH_BN = {"aten::batch_norm", "aten::native_batch_norm_backward"}
BNORM_BN = {"bnorm::batch_norm", "bnorm::batch_norm_backward"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small batches, few repeats")
    parser.add_argument("--full", action="store_true", help="also 224x224 inputs")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--markdown", help="also write the tables to this file")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    repeats = 3 if args.quick else args.repeats
    configs = [(8, 112)] if args.quick else [(8, 112), (32, 112)]
    if args.full:
        configs += [(8, 224), (32, 224)]
    formats = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}
    lines = []

    def out(line=""):
        print(line, flush=True)
        lines.append(line)

    out(f"torch {torch.__version__}, {torch.get_num_threads()} default threads; "
        f"median of {repeats} alternating repeats; speed-up = torch time / bnorm time")
    out()
    out("### ResNet-18, whole network")
    out()
    out("| batch x HxW | layout | threads | pass | torch ms | bnorm ms | speed-up |")
    out("| --- | --- | --- | --- | --- | --- | --- |")
    for n, hw in configs:
        for layout, fmt in formats.items():
            stock, converted = models(fmt)
            x = torch.randn(n, 3, hw, hw).to(memory_format=fmt)
            target = torch.randint(0, 1000, (n,))
            for t in threads:
                torch.set_num_threads(t)
                for name, make in (("train step", lambda m: train_step(m, x, target)),
                                   ("eval forward", lambda m: eval_forward(m, x))):
                    theirs, ours = median_times([make(stock), make(converted)], repeats, 1)
                    out(f"| {n}x{hw}x{hw} | {layout} | {t} | {name} | {theirs * 1e3:.1f} | "
                        f"{ours * 1e3:.1f} | {theirs / ours:.2f}x |")

    out()
    out("### Single layers")
    out()
    out("| shape | layout | threads | pass | torch us | bnorm us | speed-up |")
    out("| --- | --- | --- | --- | --- | --- | --- |")
    for shape in ((8, 64, 7, 7), (32, 64, 56, 56)):
        calls = 2000 if shape[0] == 8 else 20
        for layout, fmt in formats.items():
            x = torch.randn(shape).to(memory_format=fmt)
            xg = x.clone().requires_grad_()
            dy = torch.randn(shape).to(memory_format=fmt)
            pair = (torch.nn.BatchNorm2d(shape[1]), bt.BatchNorm2d(shape[1]))
            for t in threads:
                torch.set_num_threads(t)

                def repeat(f):
                    def many():
                        for _ in range(calls):
                            f()
                    return many

                def eval_call(m):
                    def f():
                        with torch.no_grad():
                            m.eval()(x)
                    return f

                def train_call(m):
                    def f():
                        m.train()(xg).backward(dy)
                    return f

                for name, make in (("eval forward", eval_call), ("train fwd+bwd", train_call)):
                    theirs, ours = median_times([repeat(make(m)) for m in pair], repeats, 1)
                    out(f"| {'x'.join(map(str, shape))} | {layout} | {t} | {name} | "
                        f"{theirs / calls * 1e6:.1f} | {ours / calls * 1e6:.1f} | "
                        f"{theirs / ours:.2f}x |")

    out()
    out("### Batch norm's share of a ResNet-18 training step (profiler)")
    out()
    out("| batch x HxW | layout | threads | torch BN ms | bnorm BN ms | BN speed-up | "
        "torch BN share | bnorm BN share |")
    out("| --- | --- | --- | --- | --- | --- | --- | --- |")
    n, hw = configs[0]
    for layout, fmt in formats.items():
        stock, converted = models(fmt)
        x = torch.randn(n, 3, hw, hw).to(memory_format=fmt)
        target = torch.randint(0, 1000, (n,))
        for t in threads:
            torch.set_num_threads(t)
            theirs = [bn_profile(stock, x, target, TORCH_BN) for _ in range(3)]
            ours = [bn_profile(converted, x, target, BNORM_BN) for _ in range(3)]
            tb = statistics.median(b for b, _ in theirs)
            ob = statistics.median(b for b, _ in ours)
            ts = statistics.median(b / s for b, s in theirs)
            os_ = statistics.median(b / s for b, s in ours)
            out(f"| {n}x{hw}x{hw} | {layout} | {t} | {tb:.1f} | {ob:.1f} | {tb / ob:.2f}x | "
                f"{ts:.0%} | {os_:.0%} |")

    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
