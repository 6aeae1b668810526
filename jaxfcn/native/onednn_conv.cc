// Stride-1 channels-last convolutions on the CPU through oneDNN, as XLA FFI handlers.
//
// Three handlers, the three products of a convolution layer's training step:
//   jaxfcn_conv_forward          y  = conv(x, k)            x (N, *S, Ci), k (*K, Ci, Co) -> y (N, *S', Co)
//   jaxfcn_conv_backward_data    dx = d<y, dy>/dx           dy (N, *S', Co), k            -> dx (N, *S, Ci)
//   jaxfcn_conv_backward_weights dk = d<y, dy>/dk           x, dy                         -> dk (*K, Ci, Co)
// with S' = S + pad_lo + pad_hi - K + 1 per spatial axis (2 or 3 of them), float32, activations in oneDNN's
// nhwc / ndhwc layout and kernels in hwio / dhwio: exactly JAX's arrays, so nothing is transposed on the way.
// The weights travel through oneDNN's preferred blocked layout (a reorder of the small kernel each call).
//
// Why: XLA:CPU's Eigen convolutions take about twice oneDNN's CPU time for the U-Net's thin layers, and
// XLA transposes activations around every kernel gradient (benchmarks/README.md, issue 17).
//
// Primitives (and the weights' reorders) are built once per shape and kept. Scratch memory is per calling
// thread, because XLA may run two handlers at once.

#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using Dims = memory::dims;

enum class Product { kForward, kBackwardData, kBackwardWeights };

// The shapes that define one convolution; the cache key.
struct Shape {
  Dims src;      // (N, Ci, *S) in oneDNN's logical order
  Dims weights;  // (Co, Ci, *K)
  Dims dst;      // (N, Co, *S')
  Dims pad_lo, pad_hi;
  bool operator<(const Shape& o) const {
    return std::tie(src, weights, dst, pad_lo, pad_hi) < std::tie(o.src, o.weights, o.dst, o.pad_lo, o.pad_hi);
  }
};

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

memory::format_tag activation_tag(size_t rank) {
  return rank == 5 ? memory::format_tag::ndhwc : memory::format_tag::nhwc;
}

memory::format_tag kernel_tag(size_t rank) {
  return rank == 5 ? memory::format_tag::dhwio : memory::format_tag::hwio;
}

memory::desc plain(const Dims& dims, memory::format_tag tag) {
  return memory::desc(dims, memory::data_type::f32, tag);
}

memory::desc any(const Dims& dims) {
  return memory::desc(dims, memory::data_type::f32, memory::format_tag::any);
}

// One product of one convolution, ready to run: the primitive, its scratchpad's layout, the layout it
// chose for the weights and, when that differs from JAX's (D)HWIO, the reorder between the two (user ->
// blocked for the forward and input gradient, blocked -> user for the kernel gradient).
struct Prepared {
  dnnl::primitive primitive;
  memory::desc scratch, weights;
  bool reorders = false;
  dnnl::reorder reorder;

  Prepared(dnnl::primitive conv, const memory::desc& scratch_layout, const memory::desc& chosen_weights,
           const memory::desc& user_weights, bool weights_are_output)
      : primitive(std::move(conv)), scratch(scratch_layout), weights(chosen_weights),
        reorders(chosen_weights != user_weights) {
    if (!reorders) return;
    auto& engine = cpu_engine();
    reorder = weights_are_output ? dnnl::reorder(dnnl::reorder::primitive_desc(engine, chosen_weights, engine, user_weights))
                                 : dnnl::reorder(dnnl::reorder::primitive_desc(engine, user_weights, engine, chosen_weights));
  }
};

// One convolution's three products (built once per shape: creating a primitive dispatches among oneDNN's
// implementations and JIT-compiles its kernel).
struct Primitives {
  memory::desc src, dst, user_weights;
  std::vector<Prepared> products;  // indexed by Product

  explicit Primitives(const Shape& s)
      : src(plain(s.src, activation_tag(s.src.size()))),
        dst(plain(s.dst, activation_tag(s.src.size()))),
        user_weights(plain(s.weights, kernel_tag(s.src.size()))) {
    auto& engine = cpu_engine();
    const Dims strides(s.src.size() - 2, 1);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    const dnnl::convolution_forward::primitive_desc forward(
        engine, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src, any(s.weights),
        dst, strides, s.pad_lo, s.pad_hi, attr);
    const dnnl::convolution_backward_data::primitive_desc data(
        engine, dnnl::algorithm::convolution_direct, src, any(s.weights), dst, strides, s.pad_lo, s.pad_hi,
        forward, attr);
    const dnnl::convolution_backward_weights::primitive_desc weights(
        engine, dnnl::algorithm::convolution_direct, src, any(s.weights), dst, strides, s.pad_lo, s.pad_hi,
        forward, attr);
    products.emplace_back(dnnl::convolution_forward(forward), forward.scratchpad_desc(), forward.weights_desc(),
                          user_weights, false);
    products.emplace_back(dnnl::convolution_backward_data(data), data.scratchpad_desc(), data.weights_desc(),
                          user_weights, false);
    products.emplace_back(dnnl::convolution_backward_weights(weights), weights.scratchpad_desc(),
                          weights.diff_weights_desc(), user_weights, true);
  }
};

Primitives& primitives_for(const Shape& shape) {
  static std::mutex mutex;
  static std::map<Shape, std::unique_ptr<Primitives>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[shape];
  if (!slot) slot = std::make_unique<Primitives>(shape);
  return *slot;
}

// Per-thread growable buffers: the scratchpad and the weights in the primitive's layout.
struct ThreadBuffers {
  std::vector<char> scratch, weights;
};

void* reserve(std::vector<char>& buffer, size_t bytes) {
  if (buffer.size() < bytes) buffer.resize(bytes);
  return buffer.data();
}

// (N, *S, C) as JAX holds it -> (N, C, *S), oneDNN's logical order.
Dims logical_activation(ffi::Span<const int64_t> d) {
  Dims out{d[0], d[d.size() - 1]};
  for (size_t i = 1; i + 1 < d.size(); ++i) out.push_back(d[i]);
  return out;
}

// (*K, Ci, Co) -> (Co, Ci, *K).
Dims logical_kernel(ffi::Span<const int64_t> d) {
  const size_t n = d.size();
  Dims out{d[n - 1], d[n - 2]};
  for (size_t i = 0; i + 2 < n; ++i) out.push_back(d[i]);
  return out;
}

ffi::Error check(size_t act_rank, size_t kernel_rank, ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi) {
  if ((act_rank != 4 && act_rank != 5) || kernel_rank != act_rank || lo.size() != act_rank - 2 ||
      hi.size() != act_rank - 2)
    return ffi::Error::InvalidArgument("jaxfcn oneDNN convolution: expects 2 or 3 spatial axes");
  return ffi::Error::Success();
}

ffi::Error run(Product product, const Shape& shape, void* src, void* weights, void* dst) {
  try {
    thread_local ThreadBuffers buffers;
    thread_local dnnl::stream stream(cpu_engine());
    auto& engine = cpu_engine();
    const auto& p = primitives_for(shape);
    const auto& step = p.products[static_cast<size_t>(product)];
    memory src_mem(p.src, engine, src);
    memory dst_mem(p.dst, engine, dst);
    memory user_weights(p.user_weights, engine, weights);
    memory scratch(step.scratch, engine, reserve(buffers.scratch, step.scratch.get_size()));
    memory used_weights =
        step.reorders ? memory(step.weights, engine, reserve(buffers.weights, step.weights.get_size())) : user_weights;
    if (step.reorders && product != Product::kBackwardWeights)
      step.reorder.execute(stream, user_weights, used_weights);
    switch (product) {
      case Product::kForward:
        step.primitive.execute(stream, {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_WEIGHTS, used_weights},
                                        {DNNL_ARG_DST, dst_mem}, {DNNL_ARG_SCRATCHPAD, scratch}});
        break;
      case Product::kBackwardData:
        step.primitive.execute(stream, {{DNNL_ARG_DIFF_DST, dst_mem}, {DNNL_ARG_WEIGHTS, used_weights},
                                        {DNNL_ARG_DIFF_SRC, src_mem}, {DNNL_ARG_SCRATCHPAD, scratch}});
        break;
      case Product::kBackwardWeights:
        step.primitive.execute(stream, {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_DIFF_DST, dst_mem},
                                        {DNNL_ARG_DIFF_WEIGHTS, used_weights}, {DNNL_ARG_SCRATCHPAD, scratch}});
        if (step.reorders) step.reorder.execute(stream, used_weights, user_weights);
        break;
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("jaxfcn oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

Shape shape_of(ffi::Span<const int64_t> src, ffi::Span<const int64_t> kernel, ffi::Span<const int64_t> dst,
               ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi) {
  return Shape{logical_activation(src), logical_kernel(kernel), logical_activation(dst), Dims(lo.begin(), lo.end()),
               Dims(hi.begin(), hi.end())};
}

ffi::Error forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k, ffi::ResultBuffer<ffi::F32> y,
                   ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi) {
  if (auto e = check(x.dimensions().size(), k.dimensions().size(), lo, hi); e.failure()) return e;
  return run(Product::kForward, shape_of(x.dimensions(), k.dimensions(), y->dimensions(), lo, hi),
             x.untyped_data(), k.untyped_data(), y->untyped_data());
}

ffi::Error backward_data(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> k, ffi::ResultBuffer<ffi::F32> dx,
                         ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi) {
  if (auto e = check(dy.dimensions().size(), k.dimensions().size(), lo, hi); e.failure()) return e;
  return run(Product::kBackwardData, shape_of(dx->dimensions(), k.dimensions(), dy.dimensions(), lo, hi),
             dx->untyped_data(), k.untyped_data(), dy.untyped_data());
}

ffi::Error backward_weights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dk,
                            ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi) {
  if (auto e = check(x.dimensions().size(), dk->dimensions().size(), lo, hi); e.failure()) return e;
  return run(Product::kBackwardWeights, shape_of(x.dimensions(), dk->dimensions(), dy.dimensions(), lo, hi),
             x.untyped_data(), dk->untyped_data(), dy.untyped_data());
}

}  // namespace

// The three handlers' one signature: two float32 arrays and the padding in, one float32 array out.
auto conv_binding() {
  return ffi::Ffi::Bind()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<ffi::Span<const int64_t>>("pad_lo")
      .Attr<ffi::Span<const int64_t>>("pad_hi");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxfcn_conv_forward, forward, conv_binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxfcn_conv_backward_data, backward_data, conv_binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxfcn_conv_backward_weights, backward_weights, conv_binding());
