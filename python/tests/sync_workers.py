"""What each process of the SyncBatchNorm tests runs (spawned by test_torch_sync.py).

Every rank builds the same global batch from a seed, takes its slice, and
compares its results with one process on the whole batch: bnorm's own
BatchNorm2d and torch.nn.BatchNorm2d (the independent oracle).
"""

import copy
import datetime
import os
import time

import torch
import torch.distributed as dist

import bnorm.torch as bt

TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-12}


def init(rank, world, rendezvous):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))


def close(errors):
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()
    if errors:
        raise AssertionError("\n".join(errors))


def splits(world):
    """Batch sizes per rank: even, uneven, and one empty rank."""
    even = [3] * world
    uneven = [1 + 2 * r for r in range(world)]
    empty = [0] + [4] * (world - 1)
    return {"even": even, "uneven": uneven, "empty rank": empty}


def close_to(got, want, dtype, what, errors, scale=None):
    if got.shape != want.shape:
        errors.append(f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}")
        return
    if want.numel() == 0:
        return
    scale = want.abs().max().item() if scale is None else scale
    err = (got.double() - want.double()).abs().max().item()
    if not err <= TOLERANCE[dtype] * max(scale, 1.0):
        errors.append(f"{what}: error {err:.3g} (scale {scale:.3g})")


def matrix(rank, world, rendezvous):
    """Forward, backward and running statistics against one process on the whole batch."""
    init(rank, world, rendezvous)
    errors = []
    c = 5
    for split_name, sizes in splits(world).items():
        for fmt_name, fmt in (("nchw", torch.contiguous_format),
                              ("channels_last", torch.channels_last)):
            for dtype in (torch.float32, torch.float64):
                tag = f"[{world} ranks, {split_name}, {fmt_name}, {dtype}]"
                g = torch.Generator().manual_seed(7)
                total = sum(sizes)
                x = (torch.randn(total, c, 4, 3, generator=g, dtype=torch.float64) * 2 + 5).to(dtype)
                dy = torch.randn(total, c, 4, 3, generator=g, dtype=torch.float64).to(dtype)
                weight = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
                bias = torch.randn(c, generator=g, dtype=torch.float64)
                start = sum(sizes[:rank])
                mine = slice(start, start + sizes[rank])

                def make(cls):
                    m = cls(c, momentum=0.3).to(dtype)
                    with torch.no_grad():
                        m.weight.copy_(weight)
                        m.bias.copy_(bias)
                        m.running_mean.fill_(0.5)
                    return m

                sync = make(bt.SyncBatchNorm)
                xl = x[mine].clone().to(memory_format=fmt).requires_grad_()
                for _ in range(2):  # the second step uses a non-zero running-mean shift
                    sync.zero_grad()
                    xl.grad = None
                    y = sync(xl)
                    y.backward(dy[mine].to(memory_format=fmt))
                grads = torch.cat([sync.weight.grad, sync.bias.grad]).double()
                dist.all_reduce(grads)

                for oracle_cls in (bt.BatchNorm2d, torch.nn.BatchNorm2d):
                    one = make(oracle_cls)
                    xo = x.clone().to(memory_format=fmt).requires_grad_()
                    for _ in range(2):
                        one.zero_grad()
                        xo.grad = None
                        yo = one(xo)
                        yo.backward(dy.to(memory_format=fmt))
                    name = f"{tag} vs {oracle_cls.__module__}"
                    close_to(y.detach(), yo.detach()[mine], dtype, f"{name} y", errors)
                    close_to(xl.grad, xo.grad[mine], dtype, f"{name} dx", errors,
                             scale=xo.grad.abs().max().item())
                    close_to(sync.running_mean, one.running_mean, dtype, f"{name} running_mean",
                             errors)
                    close_to(sync.running_var, one.running_var, dtype, f"{name} running_var",
                             errors)
                    close_to(grads, torch.cat([one.weight.grad, one.bias.grad]), dtype,
                             f"{name} summed dweight, dbias", errors)
                if sizes[rank] and y.stride() != xl.stride():
                    errors.append(f"{tag} y strides {y.stride()} vs input {xl.stride()}")
                # Bitwise equal running statistics on every rank.
                stats = torch.cat([sync.running_mean, sync.running_var]).double()
                everyone = [torch.empty_like(stats) for _ in range(world)]
                dist.all_gather(everyone, stats)
                if not all(torch.equal(everyone[0], s) for s in everyone):
                    errors.append(f"{tag} running statistics differ across ranks")
                # Eval: the running statistics, no exchange.
                sync.eval()
                one = make(bt.BatchNorm2d)
                one.load_state_dict(sync.state_dict())
                one.eval()
                with torch.no_grad():
                    close_to(sync(x[mine]), one(x[mine]), dtype, f"{tag} eval y", errors)
    close(errors)


def mismatch(rank, world, rendezvous, result_dir):
    """Rank 0 has 3 channels, the others 4: every rank raises the same error, nobody hangs."""
    init(rank, world, rendezvous)
    c = 3 if rank == 0 else 4
    m = bt.SyncBatchNorm(c)
    start = time.monotonic()
    message = "no error"
    try:
        m(torch.randn(2, c, 3, 3))
    except ValueError as e:
        message = str(e)
    elapsed = time.monotonic() - start
    bad_dtype = "no error"
    dtype = torch.float64 if rank == 1 else torch.float32
    try:
        bt.SyncBatchNorm(4).to(dtype)(torch.randn(2, 4, 3, 3, dtype=dtype))
    except ValueError as e:
        bad_dtype = str(e)
    with open(os.path.join(result_dir, f"rank{rank}.txt"), "w") as f:
        f.write(f"{elapsed}\n{message}\n{bad_dtype}\n")
    dist.destroy_process_group()


def models(rank, world, rendezvous):
    """convert_sync_batchnorm on torchvision's ResNet-18, and a short DDP training run,
    each against one process on the whole batch."""
    import torchvision

    init(rank, world, rendezvous)
    errors = []
    torch.manual_seed(0)
    stock = torchvision.models.resnet18(num_classes=10).double()
    sync = bt.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(stock))
    count = sum(isinstance(m, bt.SyncBatchNorm) for m in sync.modules())
    if count != 20:
        errors.append(f"convert_sync_batchnorm replaced {count} layers, expected 20")
    x = torch.randn(2 * world, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mine = slice(2 * rank, 2 * rank + 2)
    out = sync(x[mine])
    want = stock(x)[mine]
    close_to(out.detach(), want.detach(), torch.float64, "resnet18 logits", errors)

    # DistributedDataParallel, 4 SGD steps, against one process on the whole batch.
    def net():
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), bt.BatchNorm2d(6), torch.nn.ReLU(),
                                   torch.nn.Flatten(), torch.nn.Linear(6 * 6 * 6, 4)).double()

    ddp = torch.nn.parallel.DistributedDataParallel(
        bt.SyncBatchNorm.convert_sync_batchnorm(net()))
    single = net()
    opt_ddp = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    opt_single = torch.optim.SGD(single.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(5)
    for _ in range(4):
        xb = torch.randn(4 * world, 3, 8, 8, generator=g, dtype=torch.float64)
        tb = torch.randint(0, 4, (4 * world,), generator=g)
        part = slice(4 * rank, 4 * rank + 4)
        opt_ddp.zero_grad()
        torch.nn.functional.cross_entropy(ddp(xb[part]), tb[part]).backward()
        opt_ddp.step()
        opt_single.zero_grad()
        torch.nn.functional.cross_entropy(single(xb), tb).backward()
        opt_single.step()
    for (name, a), b in zip(ddp.module.state_dict().items(), single.state_dict().values()):
        if a.is_floating_point():
            close_to(a, b, torch.float64, f"DDP {name}", errors)
    close(errors)


STALL_TIMEOUT = 2.0  # seconds


def stall(rank, world, rendezvous, result_dir, scenario, via):
    """Rank 0 leaves the others waiting: it runs in eval mode while they train
    ("eval"), skips the second of three forwards ("skip"), or runs the forward but
    not the backward ("backward"). The deadline is the process group's timeout
    (via "group") or SyncBatchNorm's timeout argument ("module"; the group's is
    then 60 s). Each rank writes what its calls raised and how long the one that
    raised waited."""
    init(rank, world, rendezvous)
    dist.barrier()  # everyone is up: new_group's own rendezvous then takes no time
    group_timeout = STALL_TIMEOUT if via == "group" else 60.0
    group = dist.new_group(list(range(world)),
                           timeout=datetime.timedelta(seconds=group_timeout))
    m = bt.SyncBatchNorm(3, process_group=group,
                         timeout=STALL_TIMEOUT if via == "module" else None)
    x = torch.randn(4, 3, 2, 2, requires_grad=scenario == "backward")
    if scenario == "eval" and rank == 0:
        m.eval()
    steps = ([1, 3] if rank == 0 else [1, 2, 3]) if scenario == "skip" else [1]
    dist.barrier()  # the calls start together
    outcome, elapsed, message, step = "no error", 0.0, "", 0
    for step in steps:
        start = time.monotonic()
        try:
            y = m(x)
            if scenario == "backward" and rank != 0:
                start = time.monotonic()
                y.sum().backward()
        except Exception as e:  # noqa: BLE001  (the test says which type it wanted)
            outcome, message = type(e).__name__, str(e)
            elapsed = time.monotonic() - start
            break
    with open(os.path.join(result_dir, f"rank{rank}.part"), "w") as f:
        f.write(f"{outcome}\n{elapsed}\n{step}\n{message}\n")
    os.rename(os.path.join(result_dir, f"rank{rank}.part"),
              os.path.join(result_dir, f"rank{rank}.txt"))
    if rank == 0:
        # Stay alive until the others have given up: an exiting process closes its
        # connections, and the others would see a closed socket instead of silence.
        until = time.monotonic() + 10 * STALL_TIMEOUT
        while time.monotonic() < until and not all(
                os.path.exists(os.path.join(result_dir, f"rank{r}.txt")) for r in range(world)):
            time.sleep(0.05)
    # The group is broken (a collective is left half done): no barrier, no
    # destroy_process_group, which could wait on it; leave at once.
    os._exit(0)
