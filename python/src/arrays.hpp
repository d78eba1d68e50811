// From NumPy arrays to bnorm's views (the NumPy half of the binding layer;
// python/csrc/ops/cpu/tensors.h is the torch half): dtypes, shapes and
// layouts, per-channel and running-statistics arrays, each checked with a
// message that names the argument. The core checks the values (eps,
// momentum, batch size) and its errors reach Python as ValueError.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <bnorm/bnorm.hpp>
#include <cstdint>
#include <optional>
#include <string>
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

namespace bnorm::python {

// forcecast converts byte order and dtype, c_style and aligned make a packed,
// aligned copy; an array that already is a packed, aligned, native T array is
// passed through as is.
template <class T>
using Array = py::array_t<T, py::array::c_style | py::array::forcecast |
                                 py::detail::npy_api::NPY_ARRAY_ALIGNED_>;

[[noreturn]] inline void fail(const char* fn, const std::string& what) {
  throw py::value_error(std::string("bnorm.") + fn + ": " + what);
}

inline std::string shape_str(const py::array& a) {
  std::string out = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    if (d > 0) out += ", ";
    out += std::to_string(a.shape(d));
  }
  return out + (a.ndim() == 1 ? ",)" : ")");
}

inline std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// The tensor argument that fixes the dtype of the call: float16, float32 or
// float64.
inline py::array float_array(const char* fn, const char* name, const py::handle& obj) {
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
inline bnorm::Shape shape_of(const char* fn, const char* name, const py::array& x,
                             bool channels_last) {
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

// An array of input x's shape (grad_output), as tensor<T>.
template <class T>
Array<T> shaped_like(const char* fn, const char* name, const py::array& a, const Array<T>& x) {
  if (a.ndim() != x.ndim() || !std::equal(x.shape(), x.shape() + x.ndim(), a.shape()))
    fail(fn, std::string(name) + " must have the shape of input " + shape_str(x) + ", got " +
                 shape_str(a));
  return tensor<T>(fn, name, a);
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

inline void check_channels(const char* fn, const char* name, const py::array& a, int64_t c) {
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

}  // namespace bnorm::python
