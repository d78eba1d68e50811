"""bnorm.torch.SyncBatchNorm over torch.distributed (gloo on this machine's
file system rendezvous), 2 and 4 processes: see sync_workers.py for what
each rank checks."""

import os

import pytest
import torch.multiprocessing as mp

import sync_workers


def spawn(fn, world, tmp_path, *args):
    mp.spawn(fn, args=(world, str(tmp_path / "rendezvous"), *args), nprocs=world, join=True)


@pytest.mark.parametrize("world", [2, 4])
def test_global_statistics_match_one_process(world, tmp_path):
    spawn(sync_workers.matrix, world, tmp_path)


def test_mismatched_ranks_all_raise_the_same_error(tmp_path):
    world = 3
    spawn(sync_workers.mismatch, world, tmp_path, str(tmp_path))
    lines = [open(tmp_path / f"rank{r}.txt").read().splitlines() for r in range(world)]
    for elapsed, channels, dtypes in lines:
        assert float(elapsed) < 30, elapsed
        assert channels == ("bnorm.torch.SyncBatchNorm: invalid input on rank(s) [0] (this "
                            "rank: expected 3 channels ...)") or "channel" in channels, channels
        assert "dtypes differ across ranks: [1.0, 2.0, 1.0]" in dtypes, dtypes
    # Rank 0's module expects 3 channels and got 3; ranks 1, 2 likewise with 4: the
    # counts disagree, and every rank says so in the same words.
    assert len({line[1] for line in lines}) == 1
    assert "channel counts differ across ranks: [3.0, 4.0, 4.0]" in lines[0][1]


def test_torchvision_model_and_ddp_training(tmp_path):
    spawn(sync_workers.models, 2, tmp_path)


def test_single_process_is_batch_norm():
    import torch
    import bnorm.torch as bt
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5)
    a, b = bt.SyncBatchNorm(3), bt.BatchNorm2d(3)
    torch.testing.assert_close(a(x), b(x))
    torch.testing.assert_close(a.running_var, b.running_var)
    assert int(a.num_batches_tracked) == 1
