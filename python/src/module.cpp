// bnorm._bnorm: the functional API of torch.nn.functional.batch_norm over
// NumPy arrays, calling bnorm's kernels without copying C-contiguous input.
//
// Every argument is checked here (shape, dtype, writability) or by the core
// (eps, momentum, batch size) before anything is written, so a ValueError
// leaves the caller's running statistics as they were.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <bnorm/bnorm.hpp>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace py = pybind11;

// NumPy's float16 (NPY_HALF) as bnorm::float16, so that py::array_t
// checks, converts and allocates float16 arrays like the others.
namespace pybind11::detail {
template <>
struct npy_format_descriptor<bnorm::float16> {
  static constexpr auto name = const_name("float16");
  static pybind11::dtype dtype() {
    constexpr int npy_half = 23;  // NPY_HALF in numpy/ndarraytypes.h
    return reinterpret_steal<pybind11::dtype>(npy_api::get().PyArray_DescrFromType_(npy_half));
  }
};
}  // namespace pybind11::detail

namespace {

// forcecast converts byte order and dtype, c_style and aligned make a packed,
// aligned copy; an array that already is a packed, aligned, native T array is
// passed through as is.
template <class T>
using Array = py::array_t<T, py::array::c_style | py::array::forcecast |
                                 py::detail::npy_api::NPY_ARRAY_ALIGNED_>;

[[noreturn]] void fail(const char* fn, const std::string& what) {
  throw py::value_error(std::string("bnorm.") + fn + ": " + what);
}

std::string shape_str(const py::array& a) {
  std::string out = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    if (d > 0) out += ", ";
    out += std::to_string(a.shape(d));
  }
  return out + (a.ndim() == 1 ? ",)" : ")");
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// The tensor argument that fixes the dtype of the call: float16, float32 or
// float64.
py::array float_array(const char* fn, const char* name, const py::handle& obj) {
  if (obj.is_none()) fail(fn, std::string(name) + " must be an array, got None");
  py::array a = py::array::ensure(obj);
  if (!a) fail(fn, std::string(name) + " must be convertible to a NumPy array");
  const auto dt = a.dtype();
  if (dt.kind() != 'f' || (dt.itemsize() != 2 && dt.itemsize() != 4 && dt.itemsize() != 8))
    fail(fn,
         std::string(name) + " must have dtype float16, float32 or float64, got " + dtype_str(a));
  return a;
}

// f.template operator()<T>() for the element type of x.
template <class F>
decltype(auto) by_dtype(const py::array& x, F&& f) {
  switch (x.dtype().itemsize()) {
    case 8:
      return f.template operator()<double>();
    case 2:
      return f.template operator()<bnorm::float16>();
    default:
      return f.template operator()<float>();
  }
}

// input of shape (N, C, *spatial), or (N, *spatial, C) when channels_last.
bnorm::Shape shape_of(const char* fn, const char* name, const py::array& x, bool channels_last) {
  const py::ssize_t rank = x.ndim();
  if (rank < 2)
    fail(fn, std::string(name) + " must have at least 2 dimensions " +
                 (channels_last ? "(N, *spatial, C)" : "(N, C, *spatial)") + ", got shape " +
                 shape_str(x));
  bnorm::Shape shape;
  shape.layout = channels_last ? bnorm::Layout::NHWC : bnorm::Layout::NCHW;
  shape.n = x.shape(0);
  shape.c = channels_last ? x.shape(rank - 1) : x.shape(1);
  shape.s = 1;
  for (py::ssize_t d = channels_last ? 1 : 2; d < (channels_last ? rank - 1 : rank); ++d)
    shape.s *= x.shape(d);
  return shape;
}

template <class T>
Array<T> tensor(const char* fn, const char* name, const py::array& a) {
  auto out = Array<T>::ensure(a);
  if (!out) fail(fn, std::string(name) + " could not be converted to a C-contiguous array");
  return out;
}

// a has dtype T: input's, or for a per-channel array P = param_t of input's
// (float32 for float16 input, as torch's mixed-precision batch norm).
template <class T>
void check_same_dtype(const char* fn, const char* name, const py::array& a,
                      const char* why = " like input") {
  if (!py::array_t<T>::check_(a))
    fail(fn, std::string(name) + " must have dtype " +
                 py::str(py::dtype::of<T>()).cast<std::string>() + why + ", got " + dtype_str(a));
}

// Why per-channel arrays of input type T have dtype param_t<T>.
template <class T>
const char* param_why() {
  return std::is_same_v<T, bnorm::float16> ? " (per-channel arrays of float16 input are float32)"
                                           : " like input";
}

void check_channels(const char* fn, const char* name, const py::array& a, int64_t c) {
  if (a.ndim() != 1 || a.shape(0) != c)
    fail(fn, std::string(name) + " must have shape (" + std::to_string(c) +
                 ",) (one value per channel), got " + shape_str(a));
}

// A read-only per-channel array (weight, bias, saved statistics) of
// param_t<T> for input type T, or None.
template <class T, class P = bnorm::param_t<T>>
std::optional<Array<P>> channel_param(const char* fn, const char* name, const py::handle& obj,
                                      int64_t c) {
  if (obj.is_none()) return std::nullopt;
  py::array a = py::array::ensure(obj);
  if (!a) fail(fn, std::string(name) + " must be None or convertible to a NumPy array");
  check_same_dtype<P>(fn, name, a, param_why<T>());
  check_channels(fn, name, a, c);
  return tensor<P>(fn, name, a);
}

// A running statistic, updated in place: it must be the caller's own array,
// since a converted copy would silently drop the update.
template <class T, class P = bnorm::param_t<T>>
std::optional<Array<P>> running_stat(const char* fn, const char* name, const py::handle& obj,
                                     int64_t c) {
  if (obj.is_none()) return std::nullopt;
  if (!py::isinstance<py::array>(obj))
    fail(fn, std::string(name) + " must be a NumPy array (it is updated in place), got " +
                 py::str(py::type::of(obj)).cast<std::string>());
  py::array a = py::reinterpret_borrow<py::array>(obj);
  check_same_dtype<P>(fn, name, a, param_why<T>());
  check_channels(fn, name, a, c);
  if (!a.writeable()) fail(fn, std::string(name) + " must be writeable (it is updated in place)");
  if (!(a.flags() & py::array::c_style) || !(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    fail(fn, std::string(name) + " must be contiguous and aligned (it is updated in place), " +
                 "got strides (" + std::to_string(a.strides(0)) + ",)");
  return Array<P>::ensure(a);
}

template <class T>
const T* data(const std::optional<Array<T>>& a) {
  return a ? a->data() : nullptr;
}

template <class T>
T* mutable_data(std::optional<Array<T>>& a) {
  return a ? a->mutable_data() : nullptr;
}

template <class T>
Array<T> empty_like(const Array<T>& x) {
  return Array<T>(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
}

struct TrainResult {
  py::object y, save_mean, save_invstd;
};

template <class T>
TrainResult train_impl(const char* fn, const py::array& input, const py::handle& weight,
                       const py::handle& bias, const py::handle& running_mean,
                       const py::handle& running_var, std::optional<double> momentum, double eps,
                       bool channels_last, std::optional<int64_t> num_batches_tracked,
                       bool want_saved, bool unbiased_running_var = true,
                       std::optional<int64_t> virtual_batch_size = std::nullopt) {
  const Array<T> x = tensor<T>(fn, "input", input);
  const bnorm::Shape shape = shape_of(fn, "input", x, channels_last);
  const auto w = channel_param<T>(fn, "weight", weight, shape.c);
  const auto b = channel_param<T>(fn, "bias", bias, shape.c);
  auto rm = running_stat<T>(fn, "running_mean", running_mean, shape.c);
  auto rv = running_stat<T>(fn, "running_var", running_var, shape.c);
  // The core decides what momentum=None needs (num_batches_tracked >= 1).
  bnorm::Options options{eps, momentum, num_batches_tracked.value_or(0)};
  options.unbiased_running_var = unbiased_running_var;
  Array<T> y = empty_like(x);
  // Ghost batch norm saves one row of statistics per group: (groups, C).
  const int64_t groups =
      virtual_batch_size ? std::max<int64_t>(1, bnorm::ghost_groups(shape.n, *virtual_batch_size))
                         : 0;
  std::optional<Array<bnorm::param_t<T>>> mean, invstd;
  if (want_saved) {
    if (virtual_batch_size) {
      mean.emplace(std::vector<py::ssize_t>{groups, shape.c});
      invstd.emplace(std::vector<py::ssize_t>{groups, shape.c});
    } else {
      mean.emplace(shape.c);
      invstd.emplace(shape.c);
    }
  }
  {
    py::gil_scoped_release nogil;
    if (virtual_batch_size)
      bnorm::ghost_forward_training(shape, *virtual_batch_size, x.data(), data(w), data(b),
                                    y.mutable_data(), mutable_data(mean), mutable_data(invstd),
                                    mutable_data(rm), mutable_data(rv), options);
    else
      bnorm::forward_training(shape, x.data(), data(w), data(b), y.mutable_data(),
                              mutable_data(mean), mutable_data(invstd), mutable_data(rm),
                              mutable_data(rv), options);
  }
  if (!want_saved) return {std::move(y), py::none(), py::none()};
  return {std::move(y), std::move(*mean), std::move(*invstd)};
}

template <class T>
py::object eval_impl(const char* fn, const py::array& input, const py::handle& running_mean,
                     const py::handle& running_var, const py::handle& weight,
                     const py::handle& bias, double eps, bool channels_last) {
  const Array<T> x = tensor<T>(fn, "input", input);
  const bnorm::Shape shape = shape_of(fn, "input", x, channels_last);
  const auto w = channel_param<T>(fn, "weight", weight, shape.c);
  const auto b = channel_param<T>(fn, "bias", bias, shape.c);
  const auto rm = channel_param<T>(fn, "running_mean", running_mean, shape.c);
  const auto rv = channel_param<T>(fn, "running_var", running_var, shape.c);
  if (!rm || !rv)
    fail(fn, std::string("training=False normalizes with running_mean and running_var, got ") +
                 (rm ? "running_var=None" : "running_mean=None"));
  Array<T> y = empty_like(x);
  {
    py::gil_scoped_release nogil;
    bnorm::forward_inference(shape, x.data(), data(w), data(b), rm->data(), rv->data(),
                             y.mutable_data(), eps);
  }
  return y;
}

// frozen: the gradient of the inference forward (mean and invstd constants).
template <class T>
py::tuple backward_impl(const char* fn, bool frozen, const py::array& grad_output,
                        const py::array& input, const py::handle& weight, const py::handle& mean,
                        const py::handle& invstd_or_var, std::optional<double> eps,
                        bool channels_last, std::optional<int64_t> virtual_batch_size = {}) {
  const char* mean_name = frozen ? "running_mean" : "save_mean";
  const char* spread_name = frozen ? "running_var" : "save_invstd";
  check_same_dtype<T>(fn, "grad_output", grad_output);
  const Array<T> x = tensor<T>(fn, "input", input);
  const bnorm::Shape shape = shape_of(fn, "input", x, channels_last);
  if (grad_output.ndim() != x.ndim() ||
      !std::equal(x.shape(), x.shape() + x.ndim(), grad_output.shape()))
    fail(fn, "grad_output must have the shape of input " + shape_str(x) + ", got " +
                 shape_str(grad_output));
  const Array<T> dy = tensor<T>(fn, "grad_output", grad_output);
  const auto w = channel_param<T>(fn, "weight", weight, shape.c);
  if (virtual_batch_size) {
    // Ghost batch norm: one row of saved statistics per group.
    using P = bnorm::param_t<T>;
    if (*virtual_batch_size < 2)
      fail(fn, "virtual_batch_size must be >= 2, got " + std::to_string(*virtual_batch_size));
    const int64_t groups = bnorm::ghost_groups(shape.n, *virtual_batch_size);
    const auto saved = [&](const char* name, const py::handle& obj) {
      if (obj.is_none()) fail(fn, std::string(name) + " must be an array, got None");
      py::array a = py::array::ensure(obj);
      if (!a) fail(fn, std::string(name) + " must be convertible to a NumPy array");
      check_same_dtype<P>(fn, name, a, param_why<T>());
      if (a.ndim() != 2 || a.shape(0) != groups || a.shape(1) != shape.c)
        fail(fn, std::string(name) + " must have shape (" + std::to_string(groups) + ", " +
                     std::to_string(shape.c) + ") (groups of virtual_batch_size " +
                     std::to_string(*virtual_batch_size) + ", channels), got " + shape_str(a));
      return tensor<P>(fn, name, a);
    };
    const Array<P> mu = saved(mean_name, mean), sd = saved(spread_name, invstd_or_var);
    Array<T> dx = empty_like(x);
    std::optional<Array<P>> dweight, dbias;
    if (w) {
      dweight.emplace(shape.c);
      dbias.emplace(shape.c);
    }
    {
      py::gil_scoped_release nogil;
      bnorm::ghost_backward(shape, *virtual_batch_size, dy.data(), x.data(), data(w), mu.data(),
                            sd.data(), dx.mutable_data(), mutable_data(dweight),
                            mutable_data(dbias));
    }
    py::object dw = dweight ? py::object(std::move(*dweight)) : py::object(py::none());
    py::object db = dbias ? py::object(std::move(*dbias)) : py::object(py::none());
    return py::make_tuple(std::move(dx), std::move(dw), std::move(db));
  }
  const auto mu = channel_param<T>(fn, mean_name, mean, shape.c);
  const auto spread = channel_param<T>(fn, spread_name, invstd_or_var, shape.c);
  if (!mu) fail(fn, std::string(mean_name) + " must be an array, got None");
  if (!spread) fail(fn, std::string(spread_name) + " must be an array, got None");
  using P = bnorm::param_t<T>;
  Array<T> dx = empty_like(x);
  std::optional<Array<P>> dweight, dbias;
  if (w) {
    dweight.emplace(shape.c);
    dbias.emplace(shape.c);
  }
  {
    py::gil_scoped_release nogil;
    if (frozen)
      bnorm::backward_inference(shape, dy.data(), x.data(), data(w), mu->data(), spread->data(),
                                dx.mutable_data(), mutable_data(dweight), mutable_data(dbias),
                                *eps);
    else
      bnorm::backward(shape, dy.data(), x.data(), data(w), mu->data(), spread->data(),
                      dx.mutable_data(), mutable_data(dweight), mutable_data(dbias));
  }
  py::object dw = dweight ? py::object(std::move(*dweight)) : py::object(py::none());
  py::object db = dbias ? py::object(std::move(*dbias)) : py::object(py::none());
  return py::make_tuple(std::move(dx), std::move(dw), std::move(db));
}

py::object batch_norm(const py::object& input, const py::object& running_mean,
                      const py::object& running_var, const py::object& weight,
                      const py::object& bias, bool training, std::optional<double> momentum,
                      double eps, bool channels_last, std::optional<int64_t> num_batches_tracked,
                      bool unbiased_running_var) {
  constexpr const char* fn = "batch_norm";
  const py::array x = float_array(fn, "input", input);
  return by_dtype(x, [&]<class T>() -> py::object {
    if (training)
      return train_impl<T>(fn, x, weight, bias, running_mean, running_var, momentum, eps,
                           channels_last, num_batches_tracked, false, unbiased_running_var)
          .y;
    return eval_impl<T>(fn, x, running_mean, running_var, weight, bias, eps, channels_last);
  });
}

py::tuple batch_norm_train(const py::object& input, const py::object& weight,
                           const py::object& bias, const py::object& running_mean,
                           const py::object& running_var, std::optional<double> momentum,
                           double eps, bool channels_last,
                           std::optional<int64_t> num_batches_tracked, bool unbiased_running_var,
                           std::optional<int64_t> virtual_batch_size) {
  constexpr const char* fn = "batch_norm_train";
  const py::array x = float_array(fn, "input", input);
  auto r = by_dtype(x, [&]<class T>() {
    return train_impl<T>(fn, x, weight, bias, running_mean, running_var, momentum, eps,
                         channels_last, num_batches_tracked, true, unbiased_running_var,
                         virtual_batch_size);
  });
  return py::make_tuple(r.y, r.save_mean, r.save_invstd);
}

py::tuple batch_norm_backward(const py::object& grad_output, const py::object& input,
                              const py::object& weight, const py::object& save_mean,
                              const py::object& save_invstd, bool channels_last,
                              std::optional<int64_t> virtual_batch_size) {
  constexpr const char* fn = "batch_norm_backward";
  const py::array x = float_array(fn, "input", input);
  const py::array dy = float_array(fn, "grad_output", grad_output);
  return by_dtype(x, [&]<class T>() {
    return backward_impl<T>(fn, false, dy, x, weight, save_mean, save_invstd, std::nullopt,
                            channels_last, virtual_batch_size);
  });
}

template <class T>
py::tuple renorm_train_impl(const char* fn, const py::array& input, const py::handle& running_mean,
                            const py::handle& running_var, const py::handle& weight,
                            const py::handle& bias, double rmax, double dmax, double momentum,
                            double eps, bool channels_last, bool unbiased_running_var) {
  using P = bnorm::param_t<T>;
  const Array<T> x = tensor<T>(fn, "input", input);
  const bnorm::Shape shape = shape_of(fn, "input", x, channels_last);
  const auto w = channel_param<T>(fn, "weight", weight, shape.c);
  const auto b = channel_param<T>(fn, "bias", bias, shape.c);
  if (running_mean.is_none() || running_var.is_none())
    fail(fn, std::string("running_mean and running_var are required (r and d are defined by "
                         "them), got ") +
                 (running_mean.is_none() ? "running_mean=None" : "running_var=None"));
  auto rm = running_stat<T>(fn, "running_mean", running_mean, shape.c);
  auto rv = running_stat<T>(fn, "running_var", running_var, shape.c);
  bnorm::Options options{eps, momentum, 0};
  options.unbiased_running_var = unbiased_running_var;
  Array<T> y = empty_like(x);
  Array<P> mean(shape.c), invstd(shape.c), r(shape.c), d(shape.c);
  {
    py::gil_scoped_release nogil;
    bnorm::batch_renorm_forward_training(
        shape, x.data(), data(w), data(b), y.mutable_data(), mean.mutable_data(),
        invstd.mutable_data(), r.mutable_data(), d.mutable_data(), mutable_data(rm),
        mutable_data(rv), bnorm::RenormLimits{rmax, dmax}, options);
  }
  return py::make_tuple(std::move(y), std::move(mean), std::move(invstd), std::move(r),
                        std::move(d));
}

py::tuple batch_renorm_train(const py::object& input, const py::object& running_mean,
                             const py::object& running_var, const py::object& weight,
                             const py::object& bias, double rmax, double dmax, double momentum,
                             double eps, bool channels_last, bool unbiased_running_var) {
  constexpr const char* fn = "batch_renorm_train";
  const py::array x = float_array(fn, "input", input);
  return by_dtype(x, [&]<class T>() {
    return renorm_train_impl<T>(fn, x, running_mean, running_var, weight, bias, rmax, dmax,
                                momentum, eps, channels_last, unbiased_running_var);
  });
}

template <class T>
py::tuple renorm_backward_impl(const char* fn, const py::array& grad_output, const py::array& input,
                               const py::handle& weight, const py::handle& save_mean,
                               const py::handle& save_invstd, const py::handle& r_obj,
                               const py::handle& d_obj, bool channels_last) {
  using P = bnorm::param_t<T>;
  check_same_dtype<T>(fn, "grad_output", grad_output);
  const Array<T> x = tensor<T>(fn, "input", input);
  const bnorm::Shape shape = shape_of(fn, "input", x, channels_last);
  if (grad_output.ndim() != x.ndim() ||
      !std::equal(x.shape(), x.shape() + x.ndim(), grad_output.shape()))
    fail(fn, "grad_output must have the shape of input " + shape_str(x) + ", got " +
                 shape_str(grad_output));
  const Array<T> dy = tensor<T>(fn, "grad_output", grad_output);
  const auto w = channel_param<T>(fn, "weight", weight, shape.c);
  const auto mu = channel_param<T>(fn, "save_mean", save_mean, shape.c);
  const auto sd = channel_param<T>(fn, "save_invstd", save_invstd, shape.c);
  const auto r = channel_param<T>(fn, "r", r_obj, shape.c);
  const auto d = channel_param<T>(fn, "d", d_obj, shape.c);
  for (const auto& [a, name] : {std::pair{&mu, "save_mean"}, std::pair{&sd, "save_invstd"},
                                std::pair{&r, "r"}, std::pair{&d, "d"}})
    if (!*a) fail(fn, std::string(name) + " must be an array, got None");
  Array<T> dx = empty_like(x);
  std::optional<Array<P>> dweight, dbias;
  if (w) {
    dweight.emplace(shape.c);
    dbias.emplace(shape.c);
  }
  {
    py::gil_scoped_release nogil;
    bnorm::batch_renorm_backward(shape, dy.data(), x.data(), data(w), mu->data(), sd->data(),
                                 r->data(), d->data(), dx.mutable_data(), mutable_data(dweight),
                                 mutable_data(dbias));
  }
  py::object dw = dweight ? py::object(std::move(*dweight)) : py::object(py::none());
  py::object db = dbias ? py::object(std::move(*dbias)) : py::object(py::none());
  return py::make_tuple(std::move(dx), std::move(dw), std::move(db));
}

py::tuple batch_renorm_backward(const py::object& grad_output, const py::object& input,
                                const py::object& weight, const py::object& save_mean,
                                const py::object& save_invstd, const py::object& r,
                                const py::object& d, bool channels_last) {
  constexpr const char* fn = "batch_renorm_backward";
  const py::array x = float_array(fn, "input", input);
  const py::array dy = float_array(fn, "grad_output", grad_output);
  return by_dtype(x, [&]<class T>() {
    return renorm_backward_impl<T>(fn, dy, x, weight, save_mean, save_invstd, r, d, channels_last);
  });
}

py::tuple batch_norm_backward_eval(const py::object& grad_output, const py::object& input,
                                   const py::object& weight, const py::object& running_mean,
                                   const py::object& running_var, double eps, bool channels_last) {
  constexpr const char* fn = "batch_norm_backward_eval";
  const py::array x = float_array(fn, "input", input);
  const py::array dy = float_array(fn, "grad_output", grad_output);
  return by_dtype(x, [&]<class T>() {
    return backward_impl<T>(fn, true, dy, x, weight, running_mean, running_var, eps, channels_last);
  });
}

constexpr const char* module_doc = R"doc(
Batch normalization on the CPU with the semantics of torch.nn.functional.batch_norm.

Arrays are NumPy arrays of dtype float16, float32 or float64; every array of
a call must have the dtype of ``input``, except that float16 input takes
float32 per-channel arrays (weight, bias, running and saved statistics) and
returns float32 statistics and parameter gradients, as torch's
mixed-precision batch norm: float16 values are computed in float32 and
rounded once to float16. ``input`` has shape (N, C, *spatial), or is
stored as (N, *spatial, C) when ``channels_last=True``. A C-contiguous input
of the right dtype is read in place (no copy); anything else is copied once.
The GIL is released while the kernels run. Bad arguments raise ValueError
before anything is written, so running statistics are never half updated.
)doc";

constexpr const char* batch_norm_doc = R"doc(
Batch normalization forward, like torch.nn.functional.batch_norm.

Args:
    input: (N, C, *spatial) array, or (N, *spatial, C) with channels_last=True.
    running_mean, running_var: float arrays of shape (C,), or None. With
        training=True they are updated in place (they must be writeable,
        C-contiguous arrays of input's dtype); running_var tracks the
        unbiased variance. With training=False they are required and used to
        normalize.
    weight, bias: (C,) arrays, or None (gamma = 1, beta = 0).
    training: normalize with the batch statistics (needs N * prod(spatial) > 1)
        instead of the running ones.
    momentum: weight of this batch in the running statistics, in [0, 1];
        None selects the cumulative moving average, which then needs
        num_batches_tracked.
    eps: added to the variance before the square root, > 0.
    channels_last: input is stored as (N, *spatial, C).
    num_batches_tracked: keyword only; batches seen including this one (>= 1).
        Required when momentum is None and running statistics are updated.
    unbiased_running_var: keyword only. True (PyTorch, cuDNN): running_var
        averages the unbiased batch variance var * m / (m - 1); False (ONNX,
        Flax, Keras): the batch variance itself. Their momentum is
        1 - this momentum.

Returns:
    The output, a new C-contiguous array of input's shape and dtype.

Raises:
    ValueError: naming the bad argument and its value (the C++ message for
        the checks done by the core); nothing has been written.
)doc";

constexpr const char* batch_norm_train_doc = R"doc(
Training forward that also returns what batch_norm_backward needs.

Args:
    input: (N, C, *spatial) array, or (N, *spatial, C) with channels_last=True;
        needs N * prod(spatial) > 1.
    weight, bias: (C,) arrays, or None.
    running_mean, running_var: (C,) arrays updated in place, or None (both or
        neither).
    momentum, eps, channels_last, num_batches_tracked, unbiased_running_var:
        as in batch_norm.
    virtual_batch_size: keyword only; None, or ghost batch norm: consecutive
        groups of this many samples (>= 2; the last group may be smaller but
        must hold more than one value per channel), each normalized with its
        own statistics, the running statistics updated once per group in
        order (with momentum=None, group g counts as batch
        num_batches_tracked + g).

Returns:
    (output, save_mean, save_invstd): save_mean is the batch mean and
    save_invstd is 1 / sqrt(biased batch variance + eps), both of shape (C,),
    or (groups, C) with virtual_batch_size.

Raises:
    ValueError: as batch_norm; nothing has been written.
)doc";

constexpr const char* batch_norm_backward_doc = R"doc(
Gradients of the training forward, through the batch mean and variance.

Args:
    grad_output: dL/dy, of input's shape and dtype.
    input: the input of the forward, in the same layout.
    weight: the (C,) weight of the forward, or None.
    save_mean, save_invstd: what batch_norm_train returned.
    channels_last: input and grad_output are stored as (N, *spatial, C).
    virtual_batch_size: keyword only; the forward's, for ghost batch norm
        (then save_mean and save_invstd have shape (groups, C)).

Returns:
    (grad_input, grad_weight, grad_bias); grad_weight and grad_bias are None
    when weight is None.

Raises:
    ValueError: naming the bad argument and its value.
)doc";

constexpr const char* batch_norm_backward_eval_doc = R"doc(
Gradients of the inference forward (batch_norm with training=False).

The running statistics are constants there, so grad_input is
weight * grad_output / sqrt(running_var + eps), with no term through the
batch moments.

Args:
    grad_output: dL/dy, of input's shape and dtype.
    input: the input of the forward, in the same layout.
    weight: the (C,) weight of the forward, or None.
    running_mean, running_var: the (C,) statistics the forward used.
    eps: as in the forward, > 0.
    channels_last: input and grad_output are stored as (N, *spatial, C).

Returns:
    (grad_input, grad_weight, grad_bias); grad_weight and grad_bias are None
    when weight is None.

Raises:
    ValueError: naming the bad argument and its value.
)doc";

constexpr const char* batch_renorm_train_doc = R"doc(
Batch Renormalization training forward (Ioffe, 2017, Algorithm 1).

Per channel, with sigma = sqrt(running_var + eps) and sigma_B =
sqrt(batch var + eps), both taken before the update:
r = clip(sigma_B / sigma, 1/rmax, rmax), d = clip((mean_B - running_mean) /
sigma, -dmax, dmax), output = weight * ((x - mean_B) / sigma_B * r + d) + bias.
Then running_mean and running_var are updated in place as batch_norm does.
rmax=1, dmax=0 is batch norm exactly. Inference is batch_norm with
training=False.

Args:
    input: (N, C, *spatial) array, or (N, *spatial, C) with channels_last=True;
        needs N * prod(spatial) > 1.
    running_mean, running_var: (C,) arrays, required (they define r and d),
        updated in place.
    weight, bias: (C,) arrays, or None.
    rmax: >= 1. dmax: >= 0.
    momentum: weight of this batch in the running statistics, in [0, 1].
    eps, channels_last: as in batch_norm.
    unbiased_running_var: keyword only, as in batch_norm.

Returns:
    (output, save_mean, save_invstd, r, d), the last four of shape (C,).

Raises:
    ValueError: naming the bad argument and its value; nothing has been written.
)doc";

constexpr const char* batch_renorm_backward_doc = R"doc(
Gradients of batch_renorm_train with r and d held constant (stop-gradient).

Args:
    grad_output, input, weight, channels_last: as in batch_norm_backward.
    save_mean, save_invstd, r, d: what batch_renorm_train returned.

Returns:
    (grad_input, grad_weight, grad_bias); grad_weight is sum dy * x_hat with
    x_hat = (x - mean) * invstd * r + d. grad_weight and grad_bias are None
    when weight is None.

Raises:
    ValueError: naming the bad argument and its value.
)doc";

}  // namespace

PYBIND11_MODULE(_bnorm, m) {
  m.doc() = module_doc;
  m.attr("__version__") = BNORM_VERSION;
  m.def("batch_norm", &batch_norm, batch_norm_doc, py::arg("input"),
        py::arg("running_mean") = py::none(), py::arg("running_var") = py::none(),
        py::arg("weight") = py::none(), py::arg("bias") = py::none(), py::arg("training") = false,
        py::arg("momentum") = 0.1, py::arg("eps") = 1e-5, py::arg("channels_last") = false,
        py::kw_only(), py::arg("num_batches_tracked") = py::none(),
        py::arg("unbiased_running_var") = true);
  m.def("batch_norm_train", &batch_norm_train, batch_norm_train_doc, py::arg("input"),
        py::arg("weight") = py::none(), py::arg("bias") = py::none(),
        py::arg("running_mean") = py::none(), py::arg("running_var") = py::none(),
        py::arg("momentum") = 0.1, py::arg("eps") = 1e-5, py::arg("channels_last") = false,
        py::kw_only(), py::arg("num_batches_tracked") = py::none(),
        py::arg("unbiased_running_var") = true, py::arg("virtual_batch_size") = py::none());
  m.def("batch_norm_backward", &batch_norm_backward, batch_norm_backward_doc,
        py::arg("grad_output"), py::arg("input"), py::arg("weight"), py::arg("save_mean"),
        py::arg("save_invstd"), py::arg("channels_last") = false, py::kw_only(),
        py::arg("virtual_batch_size") = py::none());
  m.def("batch_renorm_train", &batch_renorm_train, batch_renorm_train_doc, py::arg("input"),
        py::arg("running_mean"), py::arg("running_var"), py::arg("weight") = py::none(),
        py::arg("bias") = py::none(), py::arg("rmax") = 3.0, py::arg("dmax") = 5.0,
        py::arg("momentum") = 0.01, py::arg("eps") = 1e-5, py::arg("channels_last") = false,
        py::kw_only(), py::arg("unbiased_running_var") = true);
  m.def("batch_renorm_backward", &batch_renorm_backward, batch_renorm_backward_doc,
        py::arg("grad_output"), py::arg("input"), py::arg("weight"), py::arg("save_mean"),
        py::arg("save_invstd"), py::arg("r"), py::arg("d"), py::arg("channels_last") = false);
  m.def("batch_norm_backward_eval", &batch_norm_backward_eval, batch_norm_backward_eval_doc,
        py::arg("grad_output"), py::arg("input"), py::arg("weight"), py::arg("running_mean"),
        py::arg("running_var"), py::arg("eps") = 1e-5, py::arg("channels_last") = false);
}
