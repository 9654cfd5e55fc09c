// Input validation shared by the CPU and CUDA op implementations.
//
// Every user-facing error names the op, the argument and the bad value, e.g.
//   hardmix::margin: logits must be a 2-D tensor [B, C], got a 3-D tensor of
//   shape [2, 3, 4]
// Errors are thrown as std::runtime_error; the stable ABI's boxing turns them
// into a Python RuntimeError carrying this message. Checks run before any
// output is written, so a failed call mutates nothing.
#pragma once

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <sstream>
#include <stdexcept>
#include <string>

namespace hardmix {
namespace detail {

template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream oss;
  ((oss << args), ...);
  return oss.str();
}

inline std::string shape_str(const torch::stable::Tensor& t) {
  std::ostringstream oss;
  oss << "[";
  const auto sizes = t.sizes();
  for (size_t i = 0; i < sizes.size(); ++i) {
    oss << (i ? ", " : "") << sizes[i];
  }
  oss << "]";
  return oss.str();
}

inline std::string device_str(const torch::stable::Tensor& t) {
  if (t.is_cpu()) return "cpu";
  return concat("device type ", static_cast<int>(t.device().type()), ":",
                static_cast<int>(t.get_device_index()));
}

}  // namespace detail
}  // namespace hardmix

#define HM_CHECK(cond, ...)                                              \
  do {                                                                   \
    if (!(cond)) {                                                       \
      throw std::runtime_error(::hardmix::detail::concat(__VA_ARGS__)); \
    }                                                                    \
  } while (0)

namespace hardmix {
namespace checks {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// `t` is a `dim`-D tensor; `what` names the argument and its shape, e.g.
// "logits [B, C]".
inline void dim(const char* op, const char* what, const Tensor& t,
                int64_t want) {
  HM_CHECK(t.dim() == want, op, ": ", what, " must be a ", want,
           "-D tensor, got a ", t.dim(), "-D tensor of shape ",
           detail::shape_str(t));
}

inline void dtype(const char* op, const char* what, const Tensor& t,
                  ScalarType want) {
  HM_CHECK(t.scalar_type() == want, op, ": ", what, " must have dtype ", want,
           ", got ", t.scalar_type());
}

inline void on_cpu(const char* op, const char* what, const Tensor& t) {
  HM_CHECK(t.is_cpu(), op, ": ", what, " must be a CPU tensor here, got ",
           detail::device_str(t));
}

inline void contiguous(const char* op, const char* what, const Tensor& t) {
  HM_CHECK(t.is_contiguous(), op, ": ", what,
           " must be contiguous (it is written in place), got shape ",
           detail::shape_str(t), " with non-contiguous strides");
}

// A vector read on the host: a 1-D CPU tensor of dtype `want`; `what` names
// it and its length, e.g. "indices [B]".
inline void host_vector(const char* op, const char* name, const char* what, const Tensor& t, ScalarType want) {
  on_cpu(op, name, t);
  dim(op, what, t, 1);
  dtype(op, name, t, want);
}

// A vector written in place on the host: a contiguous CPU tensor of dtype
// `want` and shape [n]; `n_is` (optional) says what n is, e.g. "E + m + 1".
inline void host_out(const char* op, const char* name, const Tensor& t, ScalarType want, int64_t n,
                     const char* n_is = nullptr) {
  on_cpu(op, name, t);
  dtype(op, name, t, want);
  contiguous(op, name, t);
  HM_CHECK(t.dim() == 1 && t.size(0) == n, op, ": ", name, " must have shape [", n_is ? n_is : "",
           n_is ? " = " : "", n, "], got ", detail::shape_str(t));
}

// The checks of hardmix::margin that need no access to tensor data; shared by
// the CPU and CUDA implementations.
inline void margin_args(const Tensor& logits, const Tensor& targets) {
  const char* op = "hardmix::margin";
  dim(op, "logits [B, C]", logits, 2);
  dim(op, "targets [B]", targets, 1);
  const ScalarType lt = logits.scalar_type();
  HM_CHECK(lt == ScalarType::Float || lt == ScalarType::Half ||
               lt == ScalarType::BFloat16,
           op, ": logits must have dtype Float, Half or BFloat16, got ", lt);
  const ScalarType tt = targets.scalar_type();
  HM_CHECK(tt == ScalarType::Long || tt == ScalarType::Int, op,
           ": targets must have dtype Long or Int, got ", tt);
  HM_CHECK(targets.size(0) == logits.size(0), op,
           ": targets has ", targets.size(0), " entries but logits has ",
           logits.size(0), " rows (logits shape ", detail::shape_str(logits),
           ")");
  HM_CHECK(logits.size(1) >= 2, op,
           ": logits must have at least 2 classes (C >= 2), got C = ",
           logits.size(1));
  HM_CHECK(logits.device().type() == targets.device().type() &&
               logits.get_device_index() == targets.get_device_index(),
           op, ": logits and targets must be on the same device, got logits on ",
           detail::device_str(logits), " and targets on ",
           detail::device_str(targets));
}

// margin's inputs as the kernels read them: columns contiguous (rows may be
// any distance apart, so a slice such as logits[:, :C] or an expanded view is
// read in place; any other layout is copied once) and targets contiguous.
struct MarginInputs {
  Tensor logits;
  int64_t row_stride;
  Tensor targets;
};

inline MarginInputs margin_inputs(const Tensor& logits, const Tensor& targets) {
  const bool cols_contiguous = logits.stride(1) == 1 || logits.size(0) == 0;
  if (cols_contiguous) {
    return {logits, logits.stride(0), torch::stable::contiguous(targets)};
  }
  return {torch::stable::contiguous(logits), logits.size(1),
          torch::stable::contiguous(targets)};
}

// The checks of the random fill ops that need no data access.
inline void fill_args(const char* op, const Tensor& out) {
  dtype(op, "out", out, ScalarType::Double);
  contiguous(op, "out", out);
}

}  // namespace checks
}  // namespace hardmix
