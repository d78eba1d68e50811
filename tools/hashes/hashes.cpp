// bnorm_hashes: runs every public C++ entry point over a fixed set of shapes,
// layouts, element types and options, and prints one CRC-32 per output
// buffer, one line each:
//
//   <op> <dtype> <layout> n=.. c=.. s=.. <variant> <output> <crc32>
//
// Why: a change that must not alter results (a refactor, a move of code
// between layers) proves it by printing the same lines before and after, on
// the same machine and target. The inputs come from a fixed integer
// generator, so every run of one build feeds the same bits.
//
//   bnorm_hashes [--threads N]     (default: the library's default)
#include <zlib.h>

#include <bnorm/bnorm.hpp>
#include <bnorm/distributed.hpp>
#include <bnorm/fused.hpp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace {

using bnorm::Layout;
using bnorm::Options;
using bnorm::param_t;
using bnorm::Shape;

template <class T>
const char* dtype_name();
template <>
const char* dtype_name<float>() {
  return "float32";
}
template <>
const char* dtype_name<double>() {
  return "float64";
}
template <>
const char* dtype_name<bnorm::bfloat16>() {
  return "bfloat16";
}
template <>
const char* dtype_name<bnorm::float16>() {
  return "float16";
}

// Values in [lo, hi) from 53 bits of a 64-bit Mersenne twister (whose
// sequence the standard fixes), converted to T by rounding once.
template <class T>
std::vector<T> values(size_t count, uint64_t seed, double lo, double hi) {
  std::mt19937_64 gen(seed);
  std::vector<T> v(count);
  for (auto& e : v) {
    const double u = double(gen() >> 11) * 0x1p-53;
    if constexpr (std::is_same_v<T, bnorm::bfloat16> || std::is_same_v<T, bnorm::float16>)
      e = T(float(lo + (hi - lo) * u));
    else
      e = T(lo + (hi - lo) * u);
  }
  return v;
}

// One line per output; `prefix` names the op, dtype, shape and variant.
class Printer {
 public:
  explicit Printer(std::string prefix) : prefix_(std::move(prefix)) {}
  template <class E>
  void operator()(const char* output, const std::vector<E>& v) const {
    const auto bytes = reinterpret_cast<const Bytef*>(v.data());
    const uLong crc = crc32(crc32(0L, Z_NULL, 0), bytes, uInt(v.size() * sizeof(E)));
    std::printf("%s %s %08lx\n", prefix_.c_str(), output, crc);
  }

 private:
  std::string prefix_;
};

std::string describe(const char* op, const char* dtype, const Shape& s,
                     const std::string& variant) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s %s %s n=%lld c=%lld s=%lld %s", op, dtype,
                s.layout == Layout::NCHW ? "NCHW" : "NHWC", static_cast<long long>(s.n),
                static_cast<long long>(s.c), static_cast<long long>(s.s), variant.c_str());
  return buf;
}

// The inputs one shape needs, in T and in the parameter type P.
template <class T>
struct Inputs {
  using P = param_t<T>;
  Shape shape;
  std::vector<T> x, dy, residual;
  std::vector<P> weight, bias, running_mean, running_var;

  explicit Inputs(const Shape& s)
      : shape(s),
        x(values<T>(size_t(s.numel()), 1, -3.0, 5.0)),
        dy(values<T>(size_t(s.numel()), 2, -1.0, 1.0)),
        residual(values<T>(size_t(s.numel()), 3, -2.0, 2.0)),
        weight(values<P>(size_t(s.c), 4, -1.5, 1.5)),
        bias(values<P>(size_t(s.c), 5, -0.5, 0.5)),
        running_mean(values<P>(size_t(s.c), 6, -1.0, 1.0)),
        running_var(values<P>(size_t(s.c), 7, 0.25, 4.0)) {}
  size_t numel() const { return x.size(); }
  size_t c() const { return weight.size(); }
};

// The option sets each training forward runs with.
struct OptionCase {
  const char* name;
  Options options;
};

std::vector<OptionCase> option_cases() {
  std::vector<OptionCase> cases;
  cases.push_back({"default", Options{}});
  Options o;
  o.eps = 1e-3;
  o.momentum = 0.3;
  o.unbiased_running_var = false;
  cases.push_back({"eps1e-3_mom0.3_biased", o});
  o = Options{};
  o.momentum = std::nullopt;
  o.num_batches_tracked = 3;
  cases.push_back({"cumulative3", o});
  return cases;
}

template <class T>
void core(const Inputs<T>& in, bool affine) {
  using P = param_t<T>;
  const Shape& s = in.shape;
  const char* dt = dtype_name<T>();
  const P* w = affine ? in.weight.data() : nullptr;
  const P* b = affine ? in.bias.data() : nullptr;
  const std::string aff = affine ? "affine" : "plain";
  for (const auto& oc : option_cases()) {
    std::vector<T> y(in.numel()), dx(in.numel()), dxf(in.numel());
    std::vector<P> mean(in.c()), invstd(in.c()), rm = in.running_mean, rv = in.running_var;
    std::vector<P> dw(in.c()), db(in.c()), dwf(in.c()), dbf(in.c());
    bnorm::forward_training<T>(s, in.x.data(), w, b, y.data(), mean.data(), invstd.data(),
                               rm.data(), rv.data(), oc.options);
    const Printer p(describe("forward_training", dt, s, aff + "_" + oc.name));
    p("y", y), p("save_mean", mean), p("save_invstd", invstd), p("running_mean", rm),
        p("running_var", rv);
    if (std::string(oc.name) != "default") continue;
    bnorm::backward<T>(s, in.dy.data(), in.x.data(), w, mean.data(), invstd.data(), dx.data(),
                       dw.data(), db.data());
    const Printer pb(describe("backward", dt, s, aff));
    pb("dx", dx), pb("dweight", dw), pb("dbias", db);
    bnorm::backward_frozen_moments<T>(s, in.dy.data(), in.x.data(), w, mean.data(), invstd.data(),
                                      dxf.data(), dwf.data(), dbf.data());
    const Printer pf(describe("backward_frozen_moments", dt, s, aff));
    pf("dx", dxf), pf("dweight", dwf), pf("dbias", dbf);
  }
  for (const double eps : {1e-5, 1e-3}) {
    std::vector<T> y(in.numel());
    bnorm::forward_inference<T>(s, in.x.data(), w, b, in.running_mean.data(), in.running_var.data(),
                                y.data(), eps);
    Printer(describe("forward_inference", dt, s, aff + "_eps" + std::to_string(eps)))("y", y);
  }
}

template <class T>
void renorm(const Inputs<T>& in) {
  using P = param_t<T>;
  const Shape& s = in.shape;
  std::vector<T> y(in.numel()), dx(in.numel());
  std::vector<P> mean(in.c()), invstd(in.c()), r(in.c()), d(in.c()), dw(in.c()), db(in.c());
  std::vector<P> rm = in.running_mean, rv = in.running_var;
  const bnorm::RenormLimits limits{1.5, 0.5};
  bnorm::batch_renorm_forward_training<T>(s, in.x.data(), in.weight.data(), in.bias.data(),
                                          y.data(), mean.data(), invstd.data(), r.data(), d.data(),
                                          rm.data(), rv.data(), limits);
  const Printer p(describe("batch_renorm_forward_training", dtype_name<T>(), s, "rmax1.5_dmax0.5"));
  p("y", y), p("save_mean", mean), p("save_invstd", invstd), p("r", r), p("d", d),
      p("running_mean", rm), p("running_var", rv);
  bnorm::batch_renorm_backward<T>(s, in.dy.data(), in.x.data(), in.weight.data(), mean.data(),
                                  invstd.data(), r.data(), d.data(), dx.data(), dw.data(),
                                  db.data());
  const Printer pb(describe("batch_renorm_backward", dtype_name<T>(), s, "rmax1.5_dmax0.5"));
  pb("dx", dx), pb("dweight", dw), pb("dbias", db);
}

template <class T>
void ghost(const Inputs<T>& in) {
  using P = param_t<T>;
  const Shape& s = in.shape;
  const int64_t vbs = 2;
  if (s.n < 2 || (s.n % 2 == 1 && s.s == 1)) return;  // the last group needs m > 1
  const auto groups = size_t(bnorm::ghost_groups(s.n, vbs));
  std::vector<T> y(in.numel()), dx(in.numel());
  std::vector<P> mean(groups * in.c()), invstd(groups * in.c()), dw(in.c()), db(in.c());
  std::vector<P> rm = in.running_mean, rv = in.running_var;
  Options o;
  o.momentum = std::nullopt;
  o.num_batches_tracked = 2;
  bnorm::ghost_forward_training<T>(s, vbs, in.x.data(), in.weight.data(), in.bias.data(), y.data(),
                                   mean.data(), invstd.data(), rm.data(), rv.data(), o);
  const Printer p(describe("ghost_forward_training", dtype_name<T>(), s, "vbs2_cumulative2"));
  p("y", y), p("save_mean", mean), p("save_invstd", invstd), p("running_mean", rm),
      p("running_var", rv);
  bnorm::ghost_backward<T>(s, vbs, in.dy.data(), in.x.data(), in.weight.data(), mean.data(),
                           invstd.data(), dx.data(), dw.data(), db.data());
  const Printer pb(describe("ghost_backward", dtype_name<T>(), s, "vbs2"));
  pb("dx", dx), pb("dweight", dw), pb("dbias", db);
}

// The layer class over three steps: train, train (ghost), eval, each with
// its backward.
template <class T>
void layer(const Inputs<T>& in) {
  const Shape& s = in.shape;
  bnorm::BatchNorm<T> bn(s.c, 1e-4, std::nullopt);
  std::copy(in.weight.begin(), in.weight.end(), bn.weight().begin());
  std::copy(in.bias.begin(), in.bias.end(), bn.bias().begin());
  const auto step = [&](const char* name) {
    const std::vector<T> y = bn.forward(s, in.x);
    const auto g = bn.backward(in.dy);
    const Printer p(describe("BatchNorm", dtype_name<T>(), s, name));
    p("y", y), p("dx", g.dx), p("dweight", g.dweight), p("dbias", g.dbias);
    std::vector<param_t<T>> rm(bn.running_mean().begin(), bn.running_mean().end());
    std::vector<param_t<T>> rv(bn.running_var().begin(), bn.running_var().end());
    p("running_mean", rm), p("running_var", rv);
  };
  step("train");
  if (s.n >= 4 && s.n % 2 == 0) {
    bn.set_virtual_batch_size(2);
    step("train_ghost2");
    bn.set_virtual_batch_size(0);
  }
  bn.eval();
  step("eval");
}

template <class T>
void fused(const Inputs<T>& in) {
  using P = param_t<T>;
  const Shape& s = in.shape;
  const char* dt = dtype_name<T>();
  struct Case {
    const char* name;
    bnorm::Epilogue e;
    bool residual;
  };
  std::vector<Case> cases;
  cases.push_back({"relu_residual", {bnorm::Activation::relu, 0.01, false, 1e-5}, true});
  cases.push_back({"identity", {bnorm::Activation::identity, 0.01, false, 1e-5}, false});
  cases.push_back({"leaky0.1_absw", {bnorm::Activation::leaky_relu, 0.1, true, 1e-3}, false});
  for (const auto& cs : cases) {
    const std::string v = cs.name;
    const T* res = cs.residual ? in.residual.data() : nullptr;
    std::vector<T> y(in.numel()), yi(in.numel()), dx(in.numel()), dres(in.numel());
    std::vector<T> dxo(in.numel());
    std::vector<P> mean(in.c()), invstd(in.c()), rm = in.running_mean, rv = in.running_var;
    std::vector<P> dw(in.c()), db(in.c()), dwo(in.c()), dbo(in.c());
    bnorm::fused_forward_training<T>(s, in.x.data(), res, in.weight.data(), in.bias.data(),
                                     y.data(), mean.data(), invstd.data(), rm.data(), rv.data(),
                                     Options{}, cs.e);
    const Printer p(describe("fused_forward_training", dt, s, v));
    p("y", y), p("save_mean", mean), p("save_invstd", invstd), p("running_mean", rm),
        p("running_var", rv);
    bnorm::fused_forward_inference<T>(s, in.x.data(), res, in.weight.data(), in.bias.data(),
                                      in.running_mean.data(), in.running_var.data(), yi.data(),
                                      1e-5, cs.e);
    Printer(describe("fused_forward_inference", dt, s, v))("y", yi);
    bnorm::fused_backward<T>(s, in.dy.data(), y.data(), in.x.data(), in.weight.data(), mean.data(),
                             invstd.data(), dx.data(), dw.data(), db.data(),
                             cs.residual ? dres.data() : nullptr, cs.e);
    const Printer pb(describe("fused_backward", dt, s, v));
    pb("dx", dx), pb("dweight", dw), pb("dbias", db);
    if (cs.residual) pb("dresidual", dres);
    if (cs.e.act == bnorm::Activation::relu || cs.residual) continue;  // needs an invertible act
    bnorm::fused_backward_from_output<T>(s, in.dy.data(), y.data(), in.weight.data(),
                                         in.bias.data(), invstd.data(), dxo.data(), dwo.data(),
                                         dbo.data(), cs.e);
    const Printer po(describe("fused_backward_from_output", dt, s, v));
    po("dx", dxo), po("dweight", dwo), po("dbias", dbo);
  }
}

template <class T>
void fold(const Inputs<T>& in) {
  const int64_t out = in.shape.c, fan_in = 9;
  const auto conv_w = values<T>(size_t(out * fan_in), 8, -1.0, 1.0);
  const auto conv_b = values<T>(size_t(out), 9, -1.0, 1.0);
  std::vector<T> w(conv_w.size()), b(conv_b.size());
  bnorm::fold_batch_norm<T>(out, fan_in, conv_w.data(), conv_b.data(), in.weight.data(),
                            in.bias.data(), in.running_mean.data(), in.running_var.data(), 1e-5,
                            w.data(), b.data());
  const Printer p(describe("fold_batch_norm", dtype_name<T>(), in.shape, "fan_in9"));
  p("weight", w), p("bias", b);
}

// The distributed building blocks on one process: moments, then the forward
// with them (count = m), then the backward sums and the backward with them.
template <class T>
void distributed(const Inputs<T>& in) {
  using P = param_t<T>;
  const Shape& s = in.shape;
  std::vector<double> mean(in.c()), m2(in.c()), var(in.c()), sum_dy(in.c()), sum_dy_xhat(in.c());
  bnorm::distributed::local_moments<T>(s, in.x.data(), mean.data(), m2.data());
  for (size_t k = 0; k < in.c(); ++k) var[k] = m2[k] / double(s.m());
  std::vector<T> y(in.numel()), dx(in.numel());
  std::vector<P> smean(in.c()), sinvstd(in.c()), rm = in.running_mean, rv = in.running_var;
  bnorm::distributed::forward_with_moments<T>(s, in.x.data(), in.weight.data(), in.bias.data(),
                                              mean.data(), var.data(), s.m(), y.data(),
                                              smean.data(), sinvstd.data(), rm.data(), rv.data());
  bnorm::distributed::local_backward_sums<T>(s, in.dy.data(), in.x.data(), smean.data(),
                                             sinvstd.data(), sum_dy.data(), sum_dy_xhat.data());
  bnorm::distributed::backward_with_sums<T>(s, in.dy.data(), in.x.data(), in.weight.data(),
                                            smean.data(), sinvstd.data(), sum_dy.data(),
                                            sum_dy_xhat.data(), s.m(), dx.data());
  const Printer p(describe("distributed", dtype_name<T>(), s, "one_process"));
  p("local_mean", mean), p("local_m2", m2), p("y", y), p("save_mean", smean),
      p("save_invstd", sinvstd), p("running_mean", rm), p("running_var", rv), p("sum_dy", sum_dy),
      p("sum_dy_xhat", sum_dy_xhat), p("dx", dx);
}

template <class T>
void every_entry_point(const Shape& shape) {
  const Inputs<T> in(shape);
  core(in, true);
  core(in, false);
  renorm(in);
  ghost(in);
  layer(in);
  fused(in);
  fold(in);
  distributed(in);
}

// Tails, 1x1 planes, rows narrower and wider than a vector, enough channels
// for every thread, and a plane large enough for the row splits.
const Shape kShapes[] = {{2, 3, 5},   {4, 16, 49}, {8, 64, 1},   {3, 7, 33},   {2, 130, 9},
                         {6, 5, 300}, {16, 1, 10}, {4, 512, 49}, {2, 32, 4096}};

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
      bnorm::set_num_threads(std::stoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--threads N]\n", argv[0]);
      return 2;
    }
  }
  for (const Shape& base : kShapes)
    for (const Layout layout : {Layout::NCHW, Layout::NHWC}) {
      Shape s = base;
      s.layout = layout;
      every_entry_point<float>(s);
      every_entry_point<double>(s);
      every_entry_point<bnorm::bfloat16>(s);
      every_entry_point<bnorm::float16>(s);
    }
  return 0;
}
