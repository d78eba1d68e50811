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

#include "arrays.hpp"
#include "docstrings.hpp"

namespace py = pybind11;

namespace {

using namespace bnorm::python;

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
  const Array<T> dy = shaped_like<T>(fn, "grad_output", grad_output, x);
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
  const Array<T> dy = shaped_like<T>(fn, "grad_output", grad_output, x);
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
