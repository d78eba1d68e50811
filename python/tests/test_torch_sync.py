"""bnorm.torch.SyncBatchNorm over torch.distributed (gloo on this machine's
file system rendezvous), 2 and 4 processes: see sync_workers.py for what
each rank checks."""

import os
import time

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


@pytest.mark.parametrize("scenario, via", [("eval", "group"), ("eval", "module"),
                                           ("skip", "group"), ("skip", "module"),
                                           ("backward", "module")])
def test_rank_left_waiting_raises_instead_of_hanging(scenario, via, tmp_path):
    """Rank 0 does not enter a collective the others wait in (forward or backward):
    every other rank raises SyncTimeoutError after the timeout (and within twice it),
    rank 0 nothing, and the job ends: the time limit here proves that nothing hangs."""
    world, timeout, limit = 3, sync_workers.STALL_TIMEOUT, 120.0
    start = time.monotonic()
    context = mp.start_processes(
        sync_workers.stall, nprocs=world, join=False, start_method="spawn",
        args=(world, str(tmp_path / "rendezvous"), str(tmp_path), scenario, via))
    while not context.join(timeout=1.0):
        if time.monotonic() - start > limit:
            for p in context.processes:
                p.kill()
            pytest.fail(f"still running after {limit} s: a rank hangs")
    results = {}
    for r in range(world):
        outcome, elapsed, step, message = open(tmp_path / f"rank{r}.txt").read().split("\n", 3)
        results[r] = (outcome, float(elapsed), int(step), message.strip())
    print(f"{scenario}/{via}: " + ", ".join(f"rank {r}: {o} after {e:.2f} s"
                                            for r, (o, e, _, _) in results.items()))
    assert results[0][0] == "no error", results[0]
    for r in range(1, world):
        outcome, elapsed, step, message = results[r]
        assert outcome == "SyncTimeoutError", (r, outcome, message)
        assert timeout * 0.9 <= elapsed <= 2 * timeout, (r, elapsed)
        # The skipping rank's third forward met the others' second: the third waits.
        assert step == (3 if scenario == "skip" else 1), (r, step)
        call = "backward" if scenario == "backward" else "forward"
        assert message.startswith(f"bnorm.torch.SyncBatchNorm.{call}: waited "), message
        assert "process group of size 3" in message, message
        limit_text = ("timeout 2 s" if via == "module" else "the process group's timeout of 2 s")
        assert limit_text in message, message


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


def test_timeout_argument():
    import datetime
    import torch
    import bnorm.torch as bt
    assert bt.SyncBatchNorm(3, timeout=datetime.timedelta(seconds=5)).timeout.total_seconds() == 5
    assert bt.SyncBatchNorm(3, timeout=2.5).timeout == 2.5
    assert bt.SyncBatchNorm(3).timeout is None
    for bad in (0, -1.0, float("nan"), datetime.timedelta(0)):
        with pytest.raises(ValueError, match="timeout must be > 0 seconds"):
            bt.SyncBatchNorm(3, timeout=bad)
    converted = bt.SyncBatchNorm.convert_sync_batchnorm(torch.nn.Sequential(bt.BatchNorm2d(3)),
                                                        timeout=7)
    assert converted[0].timeout == 7
    assert issubclass(bt.SyncTimeoutError, RuntimeError)
