#!/usr/bin/env python3
"""bnorm.torch.SyncBatchNorm over torch.distributed (gloo): time per step.

At a fixed global batch (default 64 x 64 x 28 x 28 float32, channels_last),
1, 2 and 4 processes on this machine each run forward + backward of
SyncBatchNorm on their share, and rank 0 reports the median time of a step,
the share of it spent inside torch.distributed calls, and the bytes each
rank hands to the collectives per step (counted at the calls). Processes
beyond the machine's cores time the scheduler as much as bnorm: read the
4-process row with that in mind. bench/mpi/run.sh does the same for the MPI
path.

  PYTHONPATH=build/release/python /usr/bin/python3 bench/torch/bench_sync.py [--n 64 --c 64 --hw 28]
"""

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bnorm.torch as bt


def worker(rank, world, rendezvous, args, results):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world)
    spent = {"seconds": 0.0, "bytes": 0}

    def counted(fn):
        def call(tensor_or_list, *a, **kw):
            tensor = kw.get("tensor", a[0] if a else None)
            tensor = tensor if isinstance(tensor, torch.Tensor) else tensor_or_list
            spent["bytes"] += tensor.numel() * tensor.element_size()
            start = time.perf_counter()
            out = fn(tensor_or_list, *a, **kw)
            spent["seconds"] += time.perf_counter() - start
            return out
        return call

    dist.all_reduce = counted(dist.all_reduce)
    dist.all_gather = counted(dist.all_gather)
    n = args.n // world
    x = torch.randn(n, args.c, args.hw, args.hw).to(memory_format=torch.channels_last)
    x.requires_grad_()
    dy = torch.randn_like(x)
    layer = bt.SyncBatchNorm(args.c)
    times, shares, sizes = [], [], []
    for step in range(args.steps + 2):
        spent["seconds"], spent["bytes"] = 0.0, 0
        dist.barrier()
        start = time.perf_counter()
        layer(x).backward(dy)
        elapsed = time.perf_counter() - start
        if step >= 2:  # warm-up
            times.append(elapsed)
            shares.append(spent["seconds"] / elapsed)
            sizes.append(spent["bytes"])
    if rank == 0:
        results.put((world, statistics.median(times), statistics.median(shares), sizes[-1]))
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--c", type=int, default=64)
    parser.add_argument("--hw", type=int, default=28)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--worlds", default="1,2,4")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    print(f"global batch {args.n}x{args.c}x{args.hw}x{args.hw} float32 channels_last, "
          f"{os.cpu_count()} cores; median of {args.steps} steps")
    print()
    print("| processes | step ms | in torch.distributed | bytes per rank and step |")
    print("| --- | --- | --- | --- |")
    for world in (int(w) for w in args.worlds.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(worker, args=(world, os.path.join(tmp, "rv"), args, results), nprocs=world,
                     join=True)
        w, step, share, size = results.get()
        print(f"| {w} | {step * 1e3:.2f} | {share:.0%} | {size} |", flush=True)


if __name__ == "__main__":
    main()
