#!/usr/bin/env python3
"""Data-parallel training on the CPU with bnorm.torch.SyncBatchNorm.

Launches 2 processes on this machine (torch.multiprocessing, gloo backend,
a file rendezvous), converts a small convolutional network's batch norms to
SyncBatchNorm, wraps it in DistributedDataParallel and trains a few steps on
each rank's half of every batch. It prints each rank's loss and checks that
the running statistics are bitwise equal on both ranks: they come from the
statistics of the whole batch, merged over the group.

  PYTHONPATH=build/release/python /usr/bin/python3 examples/torch/sync_batchnorm.py
  (or, after `pip install .`, plain `python examples/torch/sync_batchnorm.py`)
"""

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bnorm.torch as bt

WORLD = 2
STEPS = 5


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))


def worker(rank, rendezvous):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=WORLD)
    model = bt.SyncBatchNorm.convert_sync_batchnorm(net())
    model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = torch.Generator().manual_seed(1)  # the same global batches on every rank
    for step in range(STEPS):
        images = torch.randn(32, 3, 16, 16, generator=data)
        labels = torch.randint(0, 10, (32,), generator=data)
        mine = slice(rank * 16, rank * 16 + 16)  # this rank's half
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images[mine]), labels[mine])
        loss.backward()
        optimizer.step()
        print(f"rank {rank} step {step}: loss {loss.item():.4f}", flush=True)
    stats = torch.cat([m.running_var for m in model.modules() if isinstance(m, bt.SyncBatchNorm)])
    gathered = [torch.empty_like(stats) for _ in range(WORLD)]
    dist.all_gather(gathered, stats)
    if rank == 0:
        same = all(torch.equal(gathered[0], g) for g in gathered)
        print(f"running statistics bitwise equal on all {WORLD} ranks: {same}")
    dist.destroy_process_group()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(os.path.join(tmp, "rendezvous"),), nprocs=WORLD, join=True)
