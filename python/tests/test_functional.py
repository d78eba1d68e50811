"""The NumPy API beyond the torch parity sweep: copies, dtypes, layouts, docs."""

import subprocess
import sys
import threading
import tracemalloc

import bnorm
import numpy as np
import pytest

from oracle import batch_moments, per_channel

PUBLIC = ("batch_norm", "batch_norm_train", "batch_norm_backward", "batch_norm_backward_eval",
          "batch_renorm_train", "batch_renorm_backward")


def rng():
    return np.random.default_rng(7)


def test_docstrings_on_every_function():
    assert "float32" in bnorm._bnorm.__doc__
    for name in PUBLIC:
        doc = getattr(bnorm, name).__doc__
        assert doc and "Args:" in doc and "Returns:" in doc and "ValueError" in doc, name
    import bnorm.torch as bt
    for obj in (bt, bt.batch_norm, bt.convert, bt.BatchNorm1d, bt.BatchNorm2d,
                bt.BatchNorm3d):
        assert obj.__doc__, obj


def test_argument_names_and_order():
    """The signatures are the contract; pybind11 writes them into the docstring."""
    sigs = {name: getattr(bnorm, name).__doc__.splitlines()[0] for name in PUBLIC}
    assert sigs["batch_norm"].startswith(
        "batch_norm(input: object, running_mean: object = None, running_var: object = None, "
        "weight: object = None, bias: object = None, training: bool = False, "
        "momentum: Optional[float] = 0.1, eps: float = 1e-05, channels_last: bool = False, *, "
        "num_batches_tracked: Optional[int] = None, unbiased_running_var: bool = True)")
    assert sigs["batch_norm_train"].startswith(
        "batch_norm_train(input: object, weight: object = None, bias: object = None, "
        "running_mean: object = None, running_var: object = None, "
        "momentum: Optional[float] = 0.1, eps: float = 1e-05, channels_last: bool = False, *, "
        "num_batches_tracked: Optional[int] = None, unbiased_running_var: bool = True, "
        "virtual_batch_size: Optional[int] = None)")
    assert sigs["batch_norm_backward"].startswith(
        "batch_norm_backward(grad_output: object, input: object, weight: object, "
        "save_mean: object, save_invstd: object, channels_last: bool = False, *, "
        "virtual_batch_size: Optional[int] = None)")
    assert sigs["batch_renorm_train"].startswith(
        "batch_renorm_train(input: object, running_mean: object, running_var: object, "
        "weight: object = None, bias: object = None, rmax: float = 3.0, dmax: float = 5.0, "
        "momentum: float = 0.01, eps: float = 1e-05, channels_last: bool = False, *, "
        "unbiased_running_var: bool = True)")


def test_import_does_not_load_torch():
    code = "import sys, bnorm; assert 'torch' not in sys.modules; bnorm.torch; " \
           "assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_keep_the_dtype_and_shape(dtype):
    x = rng().standard_normal((4, 3, 5)).astype(dtype)
    y, mean, invstd = bnorm.batch_norm_train(x)
    assert y.dtype == mean.dtype == invstd.dtype == dtype
    assert y.shape == x.shape and mean.shape == invstd.shape == (3,)
    assert y.flags.c_contiguous
    dx, dw, db = bnorm.batch_norm_backward(np.ones_like(x), x, np.ones(3, dtype), mean, invstd)
    assert dx.dtype == dw.dtype == db.dtype == dtype


def test_saved_statistics_are_the_batch_moments():
    x = rng().standard_normal((6, 4, 3, 2)) * 3 + 1
    _, mean, invstd = bnorm.batch_norm_train(x, eps=1e-3)
    ref_mean, ref_var, _ = batch_moments(x)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(ref_var + 1e-3), rtol=1e-14)


def test_grad_weight_and_bias_are_none_without_weight():
    x = rng().standard_normal((4, 3))
    y, mean, invstd = bnorm.batch_norm_train(x)
    dx, dw, db = bnorm.batch_norm_backward(np.ones_like(x), x, None, mean, invstd)
    assert dw is None and db is None and dx.shape == x.shape
    dx, dw, db = bnorm.batch_norm_backward_eval(np.ones_like(x), x, None, mean, mean ** 2 + 1)
    assert dw is None and db is None


def test_eval_gradient_treats_running_stats_as_constants():
    r = rng()
    x, dy = r.standard_normal((5, 3, 4)), r.standard_normal((5, 3, 4))
    w, rm, rv = r.uniform(0.5, 2, 3), r.normal(size=3), r.uniform(0.5, 2, 3)
    dx, dw, db = bnorm.batch_norm_backward_eval(dy, x, w, rm, rv, 1e-3)
    invstd = per_channel(1 / np.sqrt(rv + 1e-3), 3)
    np.testing.assert_allclose(dx, per_channel(w, 3) * invstd * dy, rtol=1e-14)
    x_hat = (x - per_channel(rm, 3)) * invstd
    np.testing.assert_allclose(dw, (dy * x_hat).sum(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(db, dy.sum(axis=(0, 2)), rtol=1e-12)


def test_cumulative_average_with_momentum_none():
    """momentum=None: the running statistics are the plain mean over the batches seen."""
    r = rng()
    rm, rv = np.zeros(3), np.ones(3)
    means, vars_ = [], []
    for batches in range(1, 6):
        x = r.standard_normal((4, 3, 2)) * batches + batches
        bnorm.batch_norm(x, rm, rv, training=True, momentum=None, num_batches_tracked=batches)
        mean, _, unbiased = batch_moments(x)
        means.append(mean)
        vars_.append(unbiased)
    np.testing.assert_allclose(rm, np.mean(means, axis=0), rtol=1e-13)
    np.testing.assert_allclose(rv, np.mean(vars_, axis=0), rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channels_last_is_the_transposed_problem(dtype):
    r = rng()
    x = r.standard_normal((3, 4, 5, 2)).astype(dtype)  # (N, C, H, W)
    stored = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # (N, H, W, C)
    y_cf, mean_cf, invstd_cf = bnorm.batch_norm_train(x)
    y_cl, mean_cl, invstd_cl = bnorm.batch_norm_train(stored, channels_last=True)
    tol = 4 * np.finfo(dtype).eps
    np.testing.assert_allclose(y_cl.transpose(0, 3, 1, 2), y_cf, rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(mean_cl, mean_cf, rtol=tol, atol=tol)
    np.testing.assert_allclose(invstd_cl, invstd_cf, rtol=tol)


def test_strided_and_byte_swapped_input_are_copied_and_give_the_same_result():
    base = rng().standard_normal((4, 3, 10))
    strided = base[:, :, ::2]
    assert not strided.flags.c_contiguous
    expected = bnorm.batch_norm_train(np.ascontiguousarray(strided))
    for x in (strided, strided.astype(">f8")):
        for got, want in zip(bnorm.batch_norm_train(x), expected):
            np.testing.assert_array_equal(got, want)


def test_misaligned_input_is_copied_and_gives_the_same_result():
    x = rng().standard_normal((4, 3, 5))
    raw = bytearray(x.nbytes + 1)
    misaligned = np.frombuffer(raw, dtype=np.float64, count=x.size, offset=1).reshape(x.shape)
    misaligned[...] = x
    assert not misaligned.flags.aligned
    for got, want in zip(bnorm.batch_norm_train(misaligned), bnorm.batch_norm_train(x)):
        np.testing.assert_array_equal(got, want)


def test_array_likes_are_accepted_as_input():
    y = bnorm.batch_norm([[1.0, 2.0], [3.0, 5.0]], training=True)
    np.testing.assert_allclose(y, [[-1, -1], [1, 1]], atol=1e-4)


def traced_peak(f):
    tracemalloc.start()
    try:
        f()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_contiguous_input_is_read_in_place():
    """NumPy reports its allocations to tracemalloc: a copy of x would show up."""
    x = rng().standard_normal((32, 8, 32, 32)).astype(np.float32)  # 1 MiB
    rm, rv = np.zeros(8, np.float32), np.ones(8, np.float32)
    dy = np.ones_like(x)
    y_only = traced_peak(lambda: bnorm.batch_norm(x, rm, rv, training=True))
    assert y_only < 1.25 * x.nbytes
    _, mean, invstd = bnorm.batch_norm_train(x)
    dx_only = traced_peak(lambda: bnorm.batch_norm_backward(dy, x, None, mean, invstd))
    assert dx_only < 1.25 * x.nbytes
    # The measure can tell: a reversed view must be copied before the kernel runs.
    assert traced_peak(lambda: bnorm.batch_norm(x[:, :, :, ::-1], rm, rv, training=True)) \
        > 1.9 * x.nbytes


def test_running_stats_are_updated_in_place():
    x = rng().standard_normal((4, 3))
    rm, rv = np.zeros(3), np.ones(3)
    rm_before = rm.__array_interface__["data"][0]
    bnorm.batch_norm(x, rm, rv, training=True, momentum=1.0)
    mean, _, unbiased = batch_moments(x)
    assert rm.__array_interface__["data"][0] == rm_before
    np.testing.assert_allclose(rm, mean, rtol=1e-14)
    np.testing.assert_allclose(rv, unbiased, rtol=1e-14)


GIL_X = np.ones((64, 16, 64, 64), np.float32)  # 16 MiB: the kernels run for a while
GIL_C = np.ones(16, np.float32)
GIL_CALLS = {
    "batch_norm train": lambda: bnorm.batch_norm(GIL_X, training=True),
    "batch_norm eval": lambda: bnorm.batch_norm(GIL_X, GIL_C, GIL_C),
    "batch_norm_train": lambda: bnorm.batch_norm_train(GIL_X),
    "batch_norm_backward": lambda: bnorm.batch_norm_backward(GIL_X, GIL_X, GIL_C, GIL_C, GIL_C),
    "batch_norm_backward_eval":
        lambda: bnorm.batch_norm_backward_eval(GIL_X, GIL_X, GIL_C, GIL_C, GIL_C),
}


@pytest.mark.parametrize("call", GIL_CALLS.values(), ids=GIL_CALLS.keys())
def test_gil_is_released_while_the_kernel_runs(call):
    """With a switch interval of 1000 s a thread gives up the GIL only when it
    blocks or when C code releases it. The main thread waits for a worker that
    calls bnorm: if it gets to run before the worker has returned, bnorm let go
    of the GIL. Holding it would make that impossible, not merely unlikely; the
    retries only absorb a scheduler that wakes the main thread late."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1000)
    try:
        for _ in range(5):
            started, done = threading.Event(), []

            def work():
                started.set()
                call()
                done.append(True)

            worker = threading.Thread(target=work)
            worker.start()
            started.wait()
            inside = not done
            worker.join()
            if inside:
                break
    finally:
        sys.setswitchinterval(old)
    assert inside, "the main thread never ran while bnorm was running"
