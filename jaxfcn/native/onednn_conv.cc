// The U-Net's convolutions on the CPU through oneDNN, as XLA FFI handlers: channels-last, float32, 2 or 3
// spatial axes. Two operations, each with the three products of a layer's training step:
//
// A stride-1 convolution (jaxfcn.models.layers.conv):
//   jaxfcn_conv_forward          y  = conv(x, k)            x (N, *S, Ci), k (*K, Ci, Co) -> y (N, *S', Co)
//   jaxfcn_conv_backward_data    dx = d<y, dy>/dx           dy (N, *S', Co), k            -> dx (N, *S, Ci)
//   jaxfcn_conv_backward_weights dk = d<y, dy>/dk           x, dy                         -> dk (*K, Ci, Co)
// with S' = S + pad_lo + pad_hi - K + 1 per spatial axis.
//
// The decoder's 2×…×2 stride-2 transposed convolution (jaxfcn.models.layers.up_conv), whose kernel is the
// UpConv parameter (Ci, T·Co) with T = 2^d taps: y[2i + a, o] = Σ_c x[i, c] k[c, a·Co + o]:
//   jaxfcn_up_forward, jaxfcn_up_backward_data, jaxfcn_up_backward_weights
//   x (N, *S, Ci) and k -> y (N, *2S, Co); dy, k -> dx; x, dy -> dk (Ci, T·Co).
// (oneDNN's deconvolution with stride 2 and no padding; its weights (Co, Ci, 2, …) are that array read
// with strides.)
//
// Activations are in oneDNN's nhwc / ndhwc layout and kernels in hwio / dhwio (or the strided up-kernel):
// exactly JAX's arrays, so nothing is transposed on the way. The weights travel through oneDNN's preferred
// blocked layout (a reorder of the small kernel each call).
//
// Why: XLA:CPU's Eigen convolutions take about twice oneDNN's CPU time for the U-Net's thin layers, and
// XLA transposes activations around every kernel gradient and every up-convolution (benchmarks/README.md,
// issue 17).
//
// Threads: each call splits its batch into slices and runs them on XLA's own intra-op thread pool, one
// oneDNN thread per slice (a kernel gradient is the sum of its slices' gradients). oneDNN's own OpenMP
// threads would run beside XLA's pool instead, and a convolution that XLA runs next to another op then
// oversubscribes the cores: in a 128² U-Net step the calls took 205 ms against 158 ms in isolation, and a
// small model's step ran 1.8x slower than with slices (benchmarks/README.md, "oneDNN on XLA's threads").
// A batch of one keeps oneDNN's OpenMP threads.
//
// Primitives (and the weights' reorders) are built once per shape and thread count, and kept. Scratch
// memory is per calling thread, because XLA may run two handlers at once.

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
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

// libgomp's, the OpenMP runtime the oneDNN wheel is built on (linked by name, no omp.h needed).
extern "C" void omp_set_num_threads(int);
extern "C" int omp_get_max_threads();
extern "C" int omp_get_num_procs();

namespace {

using dnnl::memory;
using Dims = memory::dims;

enum class Product { kForward, kBackwardData, kBackwardWeights };

enum class Op { kConvolution, kUpsampling };  // stride-1 convolution | stride-2 transposed convolution

// The shapes that define one operation; the cache key.
struct Shape {
  Op op;
  Dims src;      // (N, Ci, *S) in oneDNN's logical order
  Dims weights;  // (Co, Ci, *K)
  Dims dst;      // (N, Co, *S')
  Dims pad_lo, pad_hi;
  int threads;   // oneDNN's threads per call: its kernels are specialised to the count they are built for
  bool operator<(const Shape& o) const {
    return std::tie(op, src, weights, dst, pad_lo, pad_hi, threads) <
           std::tie(o.op, o.src, o.weights, o.dst, o.pad_lo, o.pad_hi, o.threads);
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

// The weights as JAX holds them: (D)HWIO for a convolution; for the up-convolution the (Ci, T·Co) array,
// i.e. (Ci, *K, Co) row-major, read as oneDNN's logical (Co, Ci, *K).
memory::desc user_kernel(const Shape& s) {
  if (s.op == Op::kConvolution) return plain(s.weights, kernel_tag(s.weights.size()));
  const int64_t co = s.weights[0];
  Dims strides(s.weights.size());
  strides[0] = 1;
  int64_t stride = co;
  for (size_t i = s.weights.size() - 1; i >= 2; --i) {
    strides[i] = stride;
    stride *= s.weights[i];
  }
  strides[1] = stride;
  return memory::desc(s.weights, memory::data_type::f32, strides);
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
    const auto& from = weights_are_output ? chosen_weights : user_weights;
    const auto& to = weights_are_output ? user_weights : chosen_weights;
    reorder = dnnl::reorder(dnnl::reorder::primitive_desc(engine, from, engine, to));
  }
};

// One operation's three products (built once per shape: creating a primitive dispatches among oneDNN's
// implementations and JIT-compiles its kernel).
struct Primitives {
  memory::desc src, dst, user_weights;
  std::vector<Prepared> products;  // indexed by Product

  explicit Primitives(const Shape& s)
      : src(plain(s.src, activation_tag(s.src.size()))),
        dst(plain(s.dst, activation_tag(s.src.size()))),
        user_weights(user_kernel(s)) {
    if (s.op == Op::kConvolution)
      build<dnnl::convolution_forward, dnnl::convolution_backward_data, dnnl::convolution_backward_weights>(
          s, dnnl::algorithm::convolution_direct, Dims(s.src.size() - 2, 1));
    else
      build<dnnl::deconvolution_forward, dnnl::deconvolution_backward_data, dnnl::deconvolution_backward_weights>(
          s, dnnl::algorithm::deconvolution_direct, Dims(s.src.size() - 2, 2));
  }

  // oneDNN declares the convolution's and the deconvolution's primitives with the same constructors.
  template <typename Forward, typename Data, typename Weights>
  void build(const Shape& s, dnnl::algorithm algorithm, const Dims& strides) {
    auto& engine = cpu_engine();
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    const typename Forward::primitive_desc forward(engine, dnnl::prop_kind::forward_training, algorithm, src,
                                                   any(s.weights), dst, strides, s.pad_lo, s.pad_hi, attr);
    const typename Data::primitive_desc data(engine, algorithm, src, any(s.weights), dst, strides, s.pad_lo,
                                             s.pad_hi, forward, attr);
    const typename Weights::primitive_desc weights(engine, algorithm, src, any(s.weights), dst, strides,
                                                   s.pad_lo, s.pad_hi, forward, attr);
    products.emplace_back(Forward(forward), forward.scratchpad_desc(), forward.weights_desc(), user_weights, false);
    products.emplace_back(Data(data), data.scratchpad_desc(), data.weights_desc(), user_weights, false);
    products.emplace_back(Weights(weights), weights.scratchpad_desc(), weights.diff_weights_desc(), user_weights,
                          true);
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

// (Ci, T·Co) -> (Co, Ci, 2, …) with T = 2^spatial.
Dims logical_up_kernel(ffi::Span<const int64_t> d, size_t spatial) {
  const int64_t taps = int64_t{1} << spatial;
  Dims out{d[1] / taps, d[0]};
  for (size_t i = 0; i < spatial; ++i) out.push_back(2);
  return out;
}

ffi::Error check(size_t act_rank, size_t kernel_rank, ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi) {
  if ((act_rank != 4 && act_rank != 5) || kernel_rank != act_rank || lo.size() != act_rank - 2 ||
      hi.size() != act_rank - 2)
    return ffi::Error::InvalidArgument("jaxfcn oneDNN convolution: expects 2 or 3 spatial axes");
  return ffi::Error::Success();
}

// Sets the calling thread's OpenMP thread count (read when oneDNN builds and runs a primitive) and puts the
// previous one back on exit. The calling thread may be the user's: XLA runs a program's first operations on
// the thread that launched it, and PyTorch or NumPy on that thread read the same setting.
class OpenMPThreads {
 public:
  explicit OpenMPThreads(int threads) : saved_(omp_get_max_threads()) { omp_set_num_threads(threads); }
  ~OpenMPThreads() { omp_set_num_threads(saved_); }
  OpenMPThreads(const OpenMPThreads&) = delete;
  OpenMPThreads& operator=(const OpenMPThreads&) = delete;

 private:
  int saved_;
};

// One product on one shape, with shape.threads oneDNN threads, on the calling thread. Throws dnnl::error.
void run_slice(Product product, const Shape& shape, void* src, void* weights, void* dst) {
  OpenMPThreads threads(shape.threads);
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
}

// Slices of a batch, claimed one at a time by the calling thread and by helpers on XLA's pool. Helpers
// that start after the last slice is claimed return at once, so the caller only ever waits for slices
// that are running; it never waits for a queued task (which could deadlock a pool whose threads all wait).
struct Slices {
  int count = 0;
  std::function<void(int)> body;  // runs slice i; used only while the caller waits, so it may hold references
  std::atomic<int> next{0};
  std::mutex mutex;
  std::condition_variable finished;
  int done = 0;
  std::string error;

  void drain() {
    for (int i; (i = next.fetch_add(1)) < count;) {
      std::string failure;
      try {
        body(i);
      } catch (const dnnl::error& e) {
        failure = e.what();
      }
      std::lock_guard<std::mutex> lock(mutex);
      if (!failure.empty()) error = failure;
      if (++done == count) finished.notify_all();
    }
  }
};

int64_t elements(const Dims& d, size_t from) {
  int64_t n = 1;
  for (size_t i = from; i < d.size(); ++i) n *= d[i];
  return n;
}

ffi::Error run(Product product, Shape shape, void* src, void* weights, void* dst, ffi::ThreadPool pool) {
  const int64_t batch = shape.src[0];
  const int64_t pool_threads = pool.num_threads();
  const int count = static_cast<int>(std::min<int64_t>(batch, pool_threads));
  try {
    if (count < 2) {  // one example, or no pool: oneDNN's OpenMP threads, one per core
      shape.threads = static_cast<int>(pool_threads > 0 ? pool_threads : omp_get_num_procs());
      run_slice(product, shape, src, weights, dst);
      return ffi::Error::Success();
    }
    const int64_t src_per_example = elements(shape.src, 1), dst_per_example = elements(shape.dst, 1);
    const int64_t kernel_size = elements(shape.weights, 0);
    // Slice i's kernel gradient: slice 0 writes the result, the others their own partial sums (in a buffer
    // kept per calling thread, so no call allocates; every element is overwritten).
    const bool sums = product == Product::kBackwardWeights;
    thread_local std::vector<float> partial_buffer;
    const size_t partial_size = sums ? static_cast<size_t>((count - 1) * kernel_size) : 0;
    if (partial_buffer.size() < partial_size) partial_buffer.resize(partial_size);
    float* partial = partial_buffer.data();  // the helpers must use this thread's buffer, not their own
    auto state = std::make_shared<Slices>();
    state->count = count;
    state->body = [&](int i) {
      const int64_t begin = batch * i / count, end = batch * (i + 1) / count;
      Shape slice = shape;
      slice.src[0] = slice.dst[0] = end - begin;
      slice.threads = 1;
      float* slice_src = static_cast<float*>(src) + begin * src_per_example;
      float* slice_dst = static_cast<float*>(dst) + begin * dst_per_example;
      void* slice_weights = sums && i > 0 ? partial + (i - 1) * kernel_size : weights;
      run_slice(product, slice, slice_src, slice_weights, slice_dst);
    };
    for (int i = 1; i < count; ++i) pool.Schedule([state] { state->drain(); });
    state->drain();
    {
      std::unique_lock<std::mutex> lock(state->mutex);
      state->finished.wait(lock, [&] { return state->done == state->count; });
      if (!state->error.empty()) throw dnnl::error(dnnl_runtime_error, state->error.c_str());
    }
    float* total = static_cast<float*>(weights);
    for (int i = 1; sums && i < count; ++i) {
      const float* part = partial + (i - 1) * kernel_size;
      for (int64_t j = 0; j < kernel_size; ++j) total[j] += part[j];
    }
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("jaxfcn oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

Shape shape_of(ffi::Span<const int64_t> src, ffi::Span<const int64_t> kernel, ffi::Span<const int64_t> dst,
               ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi) {
  return Shape{Op::kConvolution, logical_activation(src), logical_kernel(kernel), logical_activation(dst),
               Dims(lo.begin(), lo.end()), Dims(hi.begin(), hi.end()), 0};
}

// The up-convolution's shape, or an error unless src (N, *S, Ci), dst (N, *2S, Co), kernel (Ci, 2^d·Co).
ffi::ErrorOr<Shape> up_shape_of(ffi::Span<const int64_t> src, ffi::Span<const int64_t> kernel,
                                ffi::Span<const int64_t> dst) {
  const size_t rank = src.size();
  bool ok = (rank == 4 || rank == 5) && dst.size() == rank && kernel.size() == 2 && dst[0] == src[0] &&
            kernel[0] == src[rank - 1] && kernel[1] == (int64_t{1} << (rank - 2)) * dst[rank - 1];
  for (size_t i = 1; ok && i + 1 < rank; ++i) ok = dst[i] == 2 * src[i];
  if (!ok) return ffi::Unexpected(ffi::Error::InvalidArgument("jaxfcn oneDNN up-convolution: inconsistent shapes"));
  const Dims zeros(rank - 2, 0);
  return Shape{Op::kUpsampling, logical_activation(src), logical_up_kernel(kernel, rank - 2), logical_activation(dst),
               zeros, zeros, 0};
}

ffi::Error forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k, ffi::ResultBuffer<ffi::F32> y,
                   ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi, ffi::ThreadPool pool) {
  if (auto e = check(x.dimensions().size(), k.dimensions().size(), lo, hi); e.failure()) return e;
  return run(Product::kForward, shape_of(x.dimensions(), k.dimensions(), y->dimensions(), lo, hi),
             x.untyped_data(), k.untyped_data(), y->untyped_data(), pool);
}

ffi::Error backward_data(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> k, ffi::ResultBuffer<ffi::F32> dx,
                         ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi, ffi::ThreadPool pool) {
  if (auto e = check(dy.dimensions().size(), k.dimensions().size(), lo, hi); e.failure()) return e;
  return run(Product::kBackwardData, shape_of(dx->dimensions(), k.dimensions(), dy.dimensions(), lo, hi),
             dx->untyped_data(), k.untyped_data(), dy.untyped_data(), pool);
}

ffi::Error backward_weights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dk,
                            ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi, ffi::ThreadPool pool) {
  if (auto e = check(x.dimensions().size(), dk->dimensions().size(), lo, hi); e.failure()) return e;
  return run(Product::kBackwardWeights, shape_of(x.dimensions(), dk->dimensions(), dy.dimensions(), lo, hi),
             x.untyped_data(), dk->untyped_data(), dy.untyped_data(), pool);
}

ffi::Error up_forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k, ffi::ResultBuffer<ffi::F32> y,
                      ffi::ThreadPool pool) {
  auto shape = up_shape_of(x.dimensions(), k.dimensions(), y->dimensions());
  if (shape.has_error()) return shape.error();
  return run(Product::kForward, shape.value(), x.untyped_data(), k.untyped_data(), y->untyped_data(), pool);
}

ffi::Error up_backward_data(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> k, ffi::ResultBuffer<ffi::F32> dx,
                            ffi::ThreadPool pool) {
  auto shape = up_shape_of(dx->dimensions(), k.dimensions(), dy.dimensions());
  if (shape.has_error()) return shape.error();
  return run(Product::kBackwardData, shape.value(), dx->untyped_data(), k.untyped_data(), dy.untyped_data(), pool);
}

ffi::Error up_backward_weights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dk,
                               ffi::ThreadPool pool) {
  auto shape = up_shape_of(x.dimensions(), dk->dimensions(), dy.dimensions());
  if (shape.has_error()) return shape.error();
  return run(Product::kBackwardWeights, shape.value(), x.untyped_data(), dk->untyped_data(), dy.untyped_data(),
             pool);
}

}  // namespace

// The three handlers' one signature: two float32 arrays and the padding in, one float32 array out; XLA's
// intra-op thread pool as context.
auto conv_binding() {
  return ffi::Ffi::Bind()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<ffi::Span<const int64_t>>("pad_lo")
      .Attr<ffi::Span<const int64_t>>("pad_hi")
      .Ctx<ffi::ThreadPool>();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxfcn_conv_forward, forward, conv_binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxfcn_conv_backward_data, backward_data, conv_binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxfcn_conv_backward_weights, backward_weights, conv_binding());

// The up-convolution's: no attributes (stride 2, no padding).
auto up_binding() {
  return ffi::Ffi::Bind()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Ctx<ffi::ThreadPool>();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxfcn_up_forward, up_forward, up_binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxfcn_up_backward_data, up_backward_data, up_binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxfcn_up_backward_weights, up_backward_weights, up_binding());
