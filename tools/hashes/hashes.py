"""The Python half of bnorm_hashes: one CRC-32 per output of every NumPy
function, torch operator and torch module bnorm ships, over fixed inputs.

    PYTHONPATH=build/release/python python3 tools/hashes/hashes.py [--no-torch]

The kernels' thread count follows OMP_NUM_THREADS, as everywhere in bnorm.

Prints lines in bnorm_hashes' format (``<op> <dtype> <layout> <shape>
<variant> <output> <crc32>``). A change that must not alter results prints
the same lines before and after it, on the same machine and target.
"""

import argparse
import zlib

import numpy as np

import bnorm

SHAPES = [(2, 3, 5), (4, 16, 7, 7), (8, 64), (3, 7, 3, 11), (2, 130, 9)]


def crc(a) -> str:
    if hasattr(a, "detach"):  # a torch tensor: the bits of a contiguous copy (16-bit as int16)
        a = a.detach().contiguous()
        if a.element_size() == 2:
            import torch

            a = a.view(torch.int16)
        a = a.numpy()
    return f"{zlib.crc32(np.ascontiguousarray(a).tobytes()):08x}"


def emit(prefix: str, **outputs) -> None:
    for name, value in outputs.items():
        if value is not None:
            print(f"{prefix} {name} {crc(value)}")


def values(shape, seed: int, lo: float, hi: float, dtype) -> np.ndarray:
    u = np.random.default_rng(seed).random(shape)  # float64, fixed by the seed
    return (lo + (hi - lo) * u).astype(dtype)


def numpy_module() -> None:
    for dtype in (np.float32, np.float64):
        for shape in SHAPES:
            for channels_last in (False, True):
                c = shape[-1] if channels_last else shape[1]  # NumPy's channels_last: C last
                x = values(shape, 1, -3, 5, dtype)
                dy = values(shape, 2, -1, 1, dtype)
                w, b = values(c, 4, -1.5, 1.5, dtype), values(c, 5, -0.5, 0.5, dtype)
                rm0, rv0 = values(c, 6, -1, 1, dtype), values(c, 7, 0.25, 4, dtype)
                tag = f"{np.dtype(dtype).name} {'NHWC' if channels_last else 'NCHW'} {shape}"
                for variant, kw in (("default", {}),
                                    ("mom0.3_eps1e-3_biased",
                                     dict(momentum=0.3, eps=1e-3, unbiased_running_var=False)),
                                    ("cumulative3", dict(momentum=None, num_batches_tracked=3))):
                    rm, rv = rm0.copy(), rv0.copy()
                    y, mean, invstd = bnorm.batch_norm_train(
                        x, w, b, rm, rv, channels_last=channels_last, **kw)
                    emit(f"np.batch_norm_train {tag} {variant}", y=y, save_mean=mean,
                         save_invstd=invstd, running_mean=rm, running_var=rv)
                    if variant == "default":
                        dx, dw, db = bnorm.batch_norm_backward(dy, x, w, mean, invstd,
                                                               channels_last=channels_last)
                        emit(f"np.batch_norm_backward {tag} default", dx=dx, dweight=dw, dbias=db)
                if shape[0] % 2 == 0:
                    rm, rv = rm0.copy(), rv0.copy()
                    y, mean, invstd = bnorm.batch_norm_train(
                        x, w, b, rm, rv, channels_last=channels_last, virtual_batch_size=2)
                    emit(f"np.batch_norm_train {tag} ghost2", y=y, save_mean=mean,
                         save_invstd=invstd, running_mean=rm, running_var=rv)
                    dx, dw, db = bnorm.batch_norm_backward(dy, x, w, mean, invstd,
                                                           channels_last=channels_last,
                                                           virtual_batch_size=2)
                    emit(f"np.batch_norm_backward {tag} ghost2", dx=dx, dweight=dw, dbias=db)
                rm, rv = rm0.copy(), rv0.copy()
                y = bnorm.batch_norm(x, rm, rv, w, b, training=True, channels_last=channels_last)
                emit(f"np.batch_norm {tag} training", y=y, running_mean=rm, running_var=rv)
                y = bnorm.batch_norm(x, rm0, rv0, w, b, eps=1e-3, channels_last=channels_last)
                emit(f"np.batch_norm {tag} eval_eps1e-3", y=y)
                out = bnorm.batch_norm_backward_eval(dy, x, w, rm0, rv0, eps=1e-3,
                                                     channels_last=channels_last)
                emit(f"np.batch_norm_backward_eval {tag} eps1e-3", dx=out[0], dweight=out[1],
                     dbias=out[2])
                rm, rv = rm0.copy(), rv0.copy()
                y, mean, invstd, r, d = bnorm.batch_renorm_train(
                    x, rm, rv, w, b, rmax=1.5, dmax=0.5, channels_last=channels_last)
                emit(f"np.batch_renorm_train {tag} rmax1.5_dmax0.5", y=y, save_mean=mean,
                     save_invstd=invstd, r=r, d=d, running_mean=rm, running_var=rv)
                dx, dw, db = bnorm.batch_renorm_backward(dy, x, w, mean, invstd, r, d,
                                                         channels_last=channels_last)
                emit(f"np.batch_renorm_backward {tag} rmax1.5_dmax0.5", dx=dx, dweight=dw,
                     dbias=db)


def torch_side() -> None:
    import torch
    import bnorm.torch as bt

    ops = torch.ops.bnorm
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        pdtype = torch.float64 if dtype == torch.float64 else torch.float32
        for shape in SHAPES:
            c = shape[1]
            for channels_last in (False, True):
                if channels_last and len(shape) != 4:
                    continue

                def t(seed, lo, hi, size=shape, dt=dtype):
                    v = torch.from_numpy(values(size, seed, lo, hi, np.float64)).to(dt)
                    if channels_last and v.dim() == 4:
                        v = v.contiguous(memory_format=torch.channels_last)
                    return v

                x, dy, res = t(1, -3, 5), t(2, -1, 1), t(3, -2, 2)
                w, b = t(4, -1.5, 1.5, c, pdtype), t(5, -0.5, 0.5, c, pdtype)
                rm0, rv0 = t(6, -1, 1, c, pdtype), t(7, 0.25, 4, c, pdtype)
                tag = f"{str(dtype)[6:]} {'NHWC' if channels_last else 'NCHW'} {shape}"
                rm, rv = rm0.clone(), rv0.clone()
                y, mean, invstd = ops.batch_norm_train(x, w, b, rm, rv, 0.1, 0, 1e-5)
                emit(f"op.batch_norm_train {tag} default", y=y, save_mean=mean,
                     save_invstd=invstd, running_mean=rm, running_var=rv)
                for train in (True, False):
                    g = ops.batch_norm_backward(dy, x, w, rm0, rv0, mean, invstd, train, 1e-3,
                                                [True, True, True])
                    emit(f"op.batch_norm_backward {tag} train={train}", dx=g[0], dweight=g[1],
                         dbias=g[2])
                emit(f"op.batch_norm_eval {tag} eps1e-3",
                     y=ops.batch_norm_eval(x, w, b, rm0, rv0, 1e-3))
                for act, code, slope in (("relu", "relu", 0.01), ("identity", "identity", 0.01),
                                         ("leaky0.1", "leaky_relu", 0.1)):
                    r = res if act == "relu" else None
                    rm, rv = rm0.clone(), rv0.clone()
                    y, mean, invstd = ops.fused_batch_norm_train(x, r, w, b, rm, rv, 0.1, 0, 1e-5,
                                                                 code, slope, False, 1e-5)
                    emit(f"op.fused_batch_norm_train {tag} {act}", y=y, save_mean=mean,
                         save_invstd=invstd, running_mean=rm, running_var=rv)
                    emit(f"op.fused_batch_norm_eval {tag} {act}",
                         y=ops.fused_batch_norm_eval(x, r, w, b, rm0, rv0, 1e-5, code, slope,
                                                     False, 1e-5))
                    for from_output in ((False, True) if r is None else (False,)):
                        g = ops.fused_batch_norm_backward(dy, y, x, w, b, mean, invstd, code,
                                                          slope, False, 1e-5, from_output,
                                                          [True, True, True, r is not None])
                        emit(f"op.fused_batch_norm_backward {tag} {act}_from_output="
                             f"{from_output}", dx=g[0], dweight=g[1], dbias=g[2],
                             dresidual=g[3] if r is not None else None)
                if len(shape) >= 3:
                    fw = t(8, -1, 1, (c, 3, 3, 3) if len(shape) == 4 else (c, 3), dtype)
                    fb = t(9, -1, 1, c, dtype)
                    fold = ops.fold_batch_norm(fw, fb, w, b, rm0, rv0, 1e-5)
                    emit(f"op.fold_batch_norm {tag} default", weight=fold[0], bias=fold[1])
                mean_l, m2 = ops.sync_local_moments(x)
                m = x.numel() // c
                var = m2 / m
                rm, rv = rm0.clone(), rv0.clone()
                y, smean, sinvstd = ops.sync_forward(x, w, b, mean_l, var, m, rm, rv, 0.1, 0, 1e-5)
                sdy, sdyx = ops.sync_local_backward_sums(dy, x, smean, sinvstd)
                dx = ops.sync_backward(dy, x, w, smean, sinvstd, sdy, sdyx, m)
                emit(f"op.sync {tag} one_process", local_mean=mean_l, local_m2=m2, y=y,
                     save_mean=smean, save_invstd=sinvstd, running_mean=rm, running_var=rv,
                     sum_dy=sdy, sum_dy_xhat=sdyx, dx=dx)
                modules(bt, x, dy, tag, shape, dtype, pdtype)


def modules(bt, x, dy, tag, shape, dtype, pdtype) -> None:
    """The modules over two training steps and one eval step, with backward."""
    import torch

    c, dim = shape[1], len(shape)
    kinds = {2: ("BatchNorm1d", "BatchRenorm1d", "GhostBatchNorm1d", "BatchNormAct1d"),
             3: ("BatchNorm1d", "BatchRenorm1d", "GhostBatchNorm1d", "BatchNormAct1d"),
             4: ("BatchNorm2d", "BatchRenorm2d", "GhostBatchNorm2d", "BatchNormAct2d")}[dim]
    makers = [
        ("momentum0.1", lambda: getattr(bt, kinds[0])(c)),
        ("cumulative", lambda: getattr(bt, kinds[0])(c, momentum=None)),
        ("renorm", lambda: getattr(bt, kinds[1])(c, rmax=1.5, dmax=0.5)),
    ]
    if dtype != torch.float16:  # its backward calls torch's leaky_relu, which has no Half kernel
        makers.append(("act_leaky", lambda: getattr(bt, kinds[3])(c, act="leaky_relu",
                                                                   negative_slope=0.1)))
    if shape[0] % 2 == 0:
        makers.append(("ghost2", lambda: getattr(bt, kinds[2])(c, virtual_batch_size=2)))
    for name, make in makers:
        torch.manual_seed(0)
        mod = make().to(pdtype)
        with torch.no_grad():
            if getattr(mod, "weight", None) is not None:
                mod.weight.copy_(torch.linspace(-1.5, 1.5, c, dtype=pdtype))
                mod.bias.copy_(torch.linspace(-0.5, 0.5, c, dtype=pdtype))
        outs = {}
        for step in ("train1", "train2", "eval"):
            mod.train(step != "eval")
            xi = x.clone().requires_grad_(True)
            y = mod(xi)
            y.backward(dy)
            outs[f"{step}_y"] = y
            outs[f"{step}_dx"] = xi.grad
            if getattr(mod, "weight", None) is not None:
                outs[f"{step}_dweight"] = mod.weight.grad.clone()
                outs[f"{step}_dbias"] = mod.bias.grad.clone()
                mod.weight.grad = None
                mod.bias.grad = None
            outs[f"{step}_running_mean"] = mod.running_mean.clone()
            outs[f"{step}_running_var"] = mod.running_var.clone()
        emit(f"module.{name} {tag}", **outs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    numpy_module()
    if not args.no_torch:
        torch_side()


if __name__ == "__main__":
    main()
