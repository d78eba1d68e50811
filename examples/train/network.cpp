#include "network.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <span>
#include <stdexcept>

namespace bnorm::train {

const char* to_string(Norm norm) {
  switch (norm) {
    case Norm::none:
      return "none";
    case Norm::batchnorm:
      return "batch norm";
    case Norm::frozen_moments:
      return "frozen moments";
    case Norm::affine:
      return "affine only";
    case Norm::batch_renorm:
      return "batch renorm";
    case Norm::ghost:
      return "ghost batch norm";
  }
  return "?";
}

const char* to_string(Activation activation) {
  return activation == Activation::sigmoid ? "sigmoid" : "relu";
}

// splitmix64: small, well mixed, identical everywhere.
Rng::Rng(uint64_t seed) : state_(seed) {}
uint64_t Rng::next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
double Rng::uniform() { return double(next() >> 11) * 0x1.0p-53; }
double Rng::normal() {
  const double u1 = 1.0 - uniform(), u2 = uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

// ---- normalization layer ---------------------------------------------------

template <class T>
NormLayer<T>::NormLayer(Norm kind, int features, double momentum, int64_t virtual_batch_size)
    : kind_(kind) {
  if (kind != Norm::none && kind != Norm::affine) {
    bn_.emplace(features, 1e-5, momentum);
    if (kind == Norm::ghost) bn_->set_virtual_batch_size(virtual_batch_size);
    dgamma_.assign(features, T(0));
    dbeta_.assign(features, T(0));
  } else if (kind == Norm::affine) {
    gamma_.assign(features, T(1));
    beta_.assign(features, T(0));
    dgamma_.assign(features, T(0));
    dbeta_.assign(features, T(0));
  }
}

template <class T>
Matrix<T> NormLayer<T>::forward(const Matrix<T>& z, bool training) {
  const auto n = z.rows(), c = z.cols();
  const bnorm::Shape shape{n, c, 1, bnorm::Layout::NCHW};
  switch (kind_) {
    case Norm::none:
      return z;
    case Norm::affine: {
      z_ = z;
      Matrix<T> u(n, c);
      for (Eigen::Index i = 0; i < n; ++i)
        for (Eigen::Index k = 0; k < c; ++k) u(i, k) = gamma_[k] * z(i, k) + beta_[k];
      return u;
    }
    case Norm::batchnorm:
    case Norm::ghost: {
      bn_->train(training);
      const auto y = bn_->forward(shape, std::span<const T>(z.data(), size_t(z.size())));
      return Eigen::Map<const Matrix<T>>(y.data(), n, c);
    }
    case Norm::batch_renorm: {
      if (!training) {
        bn_->eval();
        const auto y = bn_->forward(shape, std::span<const T>(z.data(), size_t(z.size())));
        return Eigen::Map<const Matrix<T>>(y.data(), n, c);
      }
      // The layer class has no renorm mode: the free functions, with the
      // layer's parameters and running statistics.
      z_ = z;
      mean_.resize(c);
      invstd_.resize(c);
      r_.resize(c);
      d_.resize(c);
      Matrix<T> u(n, c);
      bnorm::Options options;
      options.momentum = bn_->momentum();
      bnorm::batch_renorm_forward_training<T>(
          shape, z.data(), bn_->weight().data(), bn_->bias().data(), u.data(), mean_.data(),
          invstd_.data(), r_.data(), d_.data(), bn_->running_mean().data(),
          bn_->running_var().data(), limits_, options);
      return u;
    }
    case Norm::frozen_moments: {
      if (!training) {
        bn_->eval();
        const auto y = bn_->forward(shape, std::span<const T>(z.data(), size_t(z.size())));
        return Eigen::Map<const Matrix<T>>(y.data(), n, c);
      }
      // The layer class always backpropagates through the moments, so this
      // variant drives the free functions and keeps the moments itself.
      z_ = z;
      mean_.resize(c);
      invstd_.resize(c);
      Matrix<T> u(n, c);
      bnorm::forward_training<T>(shape, z.data(), bn_->weight().data(), bn_->bias().data(),
                                 u.data(), mean_.data(), invstd_.data(), bn_->running_mean().data(),
                                 bn_->running_var().data());
      return u;
    }
  }
  throw std::logic_error("NormLayer: unknown kind");
}

template <class T>
Matrix<T> NormLayer<T>::backward(const Matrix<T>& du) {
  const auto n = du.rows(), c = du.cols();
  switch (kind_) {
    case Norm::none:
      return du;
    case Norm::affine: {
      Matrix<T> dz(n, c);
      std::fill(dgamma_.begin(), dgamma_.end(), T(0));
      std::fill(dbeta_.begin(), dbeta_.end(), T(0));
      for (Eigen::Index i = 0; i < n; ++i)
        for (Eigen::Index k = 0; k < c; ++k) {
          dz(i, k) = gamma_[k] * du(i, k);
          dgamma_[k] += du(i, k) * z_(i, k);
          dbeta_[k] += du(i, k);
        }
      return dz;
    }
    case Norm::batch_renorm: {
      Matrix<T> dz(n, c);
      const bnorm::Shape shape{n, c, 1, bnorm::Layout::NCHW};
      bnorm::batch_renorm_backward<T>(shape, du.data(), z_.data(), bn_->weight().data(),
                                      mean_.data(), invstd_.data(), r_.data(), d_.data(), dz.data(),
                                      dgamma_.data(), dbeta_.data());
      return dz;
    }
    case Norm::batchnorm:
    case Norm::ghost: {
      auto g = bn_->backward(std::span<const T>(du.data(), size_t(du.size())));
      // Copied into place: the optimizer holds pointers to these buffers.
      std::copy(g.dweight.begin(), g.dweight.end(), dgamma_.begin());
      std::copy(g.dbias.begin(), g.dbias.end(), dbeta_.begin());
      return Eigen::Map<const Matrix<T>>(g.dx.data(), n, c);
    }
    case Norm::frozen_moments: {
      Matrix<T> dz(n, c);
      const bnorm::Shape shape{n, c, 1, bnorm::Layout::NCHW};
      bnorm::backward_frozen_moments<T>(shape, du.data(), z_.data(), bn_->weight().data(),
                                        mean_.data(), invstd_.data(), dz.data(), dgamma_.data(),
                                        dbeta_.data());
      return dz;
    }
  }
  throw std::logic_error("NormLayer: unknown kind");
}

template <class T>
void NormLayer<T>::params(std::vector<Param<T>>& out) {
  if (bn_) {
    out.push_back({bn_->weight().data(), dgamma_.data(), int64_t(dgamma_.size())});
    out.push_back({bn_->bias().data(), dbeta_.data(), int64_t(dbeta_.size())});
  } else if (kind_ == Norm::affine) {
    out.push_back({gamma_.data(), dgamma_.data(), int64_t(gamma_.size())});
    out.push_back({beta_.data(), dbeta_.data(), int64_t(beta_.size())});
  }
}

// ---- network -------------------------------------------------------------

template <class T>
Network<T>::Network(const NetConfig& config) : config_(config) {
  if (config.sizes.size() < 2) throw std::invalid_argument("Network: need at least 2 sizes");
  Rng rng(config.seed);
  auto make = [&](int in, int out) {
    Linear l;
    const double sd = config.init_std > 0                     ? config.init_std
                      : config.activation == Activation::relu ? std::sqrt(2.0 / in)
                                                              : std::sqrt(1.0 / in);
    l.w.resize(out, in);
    for (Eigen::Index i = 0; i < l.w.size(); ++i) l.w.data()[i] = T(sd * rng.normal());
    l.b = RowVector<T>::Zero(out);
    l.dw = Matrix<T>::Zero(out, in);
    l.db = RowVector<T>::Zero(out);
    return l;
  };
  for (size_t i = 1; i + 1 < config.sizes.size(); ++i)
    hidden_.push_back(Hidden{
        make(config.sizes[i - 1], config.sizes[i]),
        NormLayer<T>(config.norm, config.sizes[i], config.bn_momentum, config.virtual_batch_size),
        {},
        {},
        {}});
  out_ = make(config.sizes[config.sizes.size() - 2], config.sizes.back());
}

template <class T>
Matrix<T> Network<T>::linear_forward(Linear& l, const Matrix<T>& x) {
  l.x = x;
  Matrix<T> z = x * l.w.transpose();
  z.rowwise() += l.b;
  return z;
}

template <class T>
Matrix<T> Network<T>::linear_backward(Linear& l, const Matrix<T>& dz, bool need_dx) {
  l.dw.noalias() = dz.transpose() * l.x;
  l.db = dz.colwise().sum();
  if (!need_dx) return {};
  return dz * l.w;
}

template <class T>
const Matrix<T>& Network<T>::forward(const Matrix<T>& x) {
  const Matrix<T>* in = &x;
  for (auto& h : hidden_) {
    h.z = linear_forward(h.linear, *in);
    h.u = h.norm.forward(h.z, training_);
    if (config_.activation == Activation::sigmoid)
      h.a = (T(1) + (-h.u.array()).exp()).inverse().matrix();
    else
      h.a = h.u.cwiseMax(T(0));
    in = &h.a;
  }
  logits_ = linear_forward(out_, *in);
  return logits_;
}

template <class T>
void Network<T>::backward(const Matrix<T>& dlogits) {
  Matrix<T> da = linear_backward(out_, dlogits, !hidden_.empty());
  for (size_t l = hidden_.size(); l-- > 0;) {
    auto& h = hidden_[l];
    Matrix<T> du;
    if (config_.activation == Activation::sigmoid)
      du = (da.array() * h.a.array() * (T(1) - h.a.array())).matrix();
    else
      du = (da.array() * (h.u.array() > T(0)).template cast<T>()).matrix();
    const Matrix<T> dz = h.norm.backward(du);
    da = linear_backward(h.linear, dz, l > 0);
  }
}

template <class T>
std::vector<Param<T>> Network<T>::params() {
  std::vector<Param<T>> p;
  for (auto& h : hidden_) {
    p.push_back({h.linear.w.data(), h.linear.dw.data(), h.linear.w.size()});
    p.push_back({h.linear.b.data(), h.linear.db.data(), h.linear.b.size()});
    h.norm.params(p);
  }
  p.push_back({out_.w.data(), out_.dw.data(), out_.w.size()});
  p.push_back({out_.b.data(), out_.db.data(), out_.b.size()});
  return p;
}

// ---- loss and optimizer ----------------------------------------------------

template <class T>
double softmax_cross_entropy(const Matrix<T>& logits, const uint8_t* labels, Matrix<T>* dlogits,
                             int64_t* correct) {
  const auto n = logits.rows(), c = logits.cols();
  if (dlogits) dlogits->resize(n, c);
  double loss = 0;
  int64_t right = 0;
  for (Eigen::Index i = 0; i < n; ++i) {
    // Shifting by the largest logit keeps exp() finite.
    Eigen::Index best = 0;
    const T top = logits.row(i).maxCoeff(&best);
    double sum = 0;
    for (Eigen::Index k = 0; k < c; ++k) sum += std::exp(double(logits(i, k) - top));
    const double log_sum = std::log(sum) + double(top);
    loss += log_sum - double(logits(i, labels[i]));
    right += best == Eigen::Index(labels[i]);
    if (dlogits)
      for (Eigen::Index k = 0; k < c; ++k)
        (*dlogits)(i, k) =
            T((std::exp(double(logits(i, k)) - log_sum) - (k == labels[i] ? 1.0 : 0.0)) / n);
  }
  if (correct) *correct = right;
  return loss / n;
}

template <class T>
Sgd<T>::Sgd(std::vector<Param<T>> params, double lr, double momentum)
    : params_(std::move(params)), lr_(lr), momentum_(momentum) {
  for (const auto& p : params_) velocity_.emplace_back(size_t(p.size), T(0));
}

template <class T>
void Sgd<T>::step() {
  const T lr = T(lr_), mom = T(momentum_);
  for (size_t j = 0; j < params_.size(); ++j) {
    auto& p = params_[j];
    auto& v = velocity_[j];
    for (int64_t i = 0; i < p.size; ++i) {
      v[i] = mom * v[i] + p.grad[i];
      p.value[i] -= lr * v[i];
    }
  }
}

// ---- data and training -----------------------------------------------------

Matrix<float> rows(const Split& s, int64_t begin, int64_t count) {
  return Eigen::Map<const Matrix<float>>(s.x.data() + begin * s.features, count, s.features);
}

Matrix<float> rows(const Split& s, const std::vector<int64_t>& index) {
  Matrix<float> m(Eigen::Index(index.size()), s.features);
  for (size_t i = 0; i < index.size(); ++i)
    m.row(Eigen::Index(i)) =
        Eigen::Map<const RowVector<float>>(s.x.data() + index[i] * s.features, s.features);
  return m;
}

Score evaluate(Network<float>& net, const Split& data, int64_t limit, int64_t batch_size) {
  const int64_t n = limit > 0 ? std::min(limit, data.count) : data.count;
  int64_t right = 0, seen = 0;
  double loss = 0;
  for (int64_t begin = 0; begin < n; begin += batch_size) {
    const int64_t count = std::min(batch_size, n - begin);
    // A last batch of one cannot be normalized with its own statistics.
    if (net.training() && count < 2) break;
    int64_t c = 0;
    loss += softmax_cross_entropy<float>(net.forward(rows(data, begin, count)),
                                         data.labels.data() + begin, nullptr, &c) *
            double(count);
    right += c;
    seen += count;
  }
  if (seen == 0) throw std::invalid_argument("evaluate: no examples");
  return {double(right) / double(seen), loss / double(seen)};
}

int64_t train(Network<float>& net, const Split& data, const RunConfig& config,
              const StepHook& hook) {
  const int64_t n = config.train_limit > 0 ? std::min(config.train_limit, data.count) : data.count;
  if (config.batch < 2 || config.batch > n)
    throw std::invalid_argument("train: batch " + std::to_string(config.batch) + " must be in 2.." +
                                std::to_string(n));
  Rng rng(config.seed);
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  int64_t pos = n;  // forces a shuffle before the first batch
  net.train(true);
  Sgd<float> sgd(net.params(), config.lr, config.momentum);
  Matrix<float> dlogits;
  std::vector<int64_t> index(size_t(config.batch));
  std::vector<uint8_t> labels(size_t(config.batch));
  for (int64_t step = 1; step <= config.steps; ++step) {
    if (pos + config.batch > n) {
      for (int64_t i = n - 1; i > 0; --i) std::swap(order[i], order[rng.below(uint64_t(i) + 1)]);
      pos = 0;
    }
    for (int64_t i = 0; i < config.batch; ++i) {
      index[i] = order[pos + i];
      labels[i] = data.labels[index[i]];
    }
    pos += config.batch;
    const double loss = softmax_cross_entropy<float>(net.forward(rows(data, index)), labels.data(),
                                                     &dlogits, nullptr);
    if (!std::isfinite(loss)) return step;
    net.backward(dlogits);
    sgd.step();
    if (hook && !hook(step, loss)) return step;
  }
  return config.steps;
}

template <class T>
void Network<T>::set_renorm_limits(const bnorm::RenormLimits& limits) {
  for (auto& h : hidden_) h.norm.set_renorm_limits(limits);
}

template class NormLayer<float>;
template class NormLayer<double>;
template class Network<float>;
template class Network<double>;
template class Sgd<float>;
template class Sgd<double>;
template double softmax_cross_entropy<float>(const Matrix<float>&, const uint8_t*, Matrix<float>*,
                                             int64_t*);
template double softmax_cross_entropy<double>(const Matrix<double>&, const uint8_t*,
                                              Matrix<double>*, int64_t*);

}  // namespace bnorm::train
