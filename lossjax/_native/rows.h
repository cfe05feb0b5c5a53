// What lossjax's native kernels share: float32 vectors of 16 lanes (GCC's
// and Clang's vector extensions; AVX-512 where the processor has it), a
// running max over a row that keeps NaN, an exponential, the rounding to
// bfloat16, and a loop that shares chunks of rows between the calling
// thread and XLA's intra-op threads.

#ifndef LOSSJAX_NATIVE_ROWS_H_
#define LOSSJAX_NATIVE_ROWS_H_

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace lossjax {

namespace ffi = xla::ffi;

constexpr int kLanes = 16;
typedef float Floats __attribute__((vector_size(4 * kLanes)));
typedef int32_t Ints __attribute__((vector_size(4 * kLanes)));
typedef uint32_t Words __attribute__((vector_size(4 * kLanes)));
typedef uint16_t Halves __attribute__((vector_size(2 * kLanes)));

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

inline Floats Load(const float* p) {
  Floats v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// bfloat16 bits shifted up are the float32 of the same value.
inline Floats Load(const uint16_t* p) {
#if defined(__AVX512F__)
  // One widening load (GCC 12 makes two half-width ones and an insert of
  // the conversion below).
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return Floats(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
#else
  Halves h;
  std::memcpy(&h, p, sizeof h);
  Words w = __builtin_convertvector(h, Words) << 16;
  Floats v;
  std::memcpy(&v, &w, sizeof v);
  return v;
#endif
}

inline float LoadOne(float x) { return x; }
inline float LoadOne(uint16_t x) {
  uint32_t w = uint32_t(x) << 16;
  float v;
  std::memcpy(&v, &w, sizeof v);
  return v;
}

// The label's logit in a row, NaN for a label outside [0, C).
template <typename T>
inline float LabelLogit(const T* row, int64_t label, int64_t columns) {
  return label < 0 || label >= columns ? kNaN : LoadOne(row[label]);
}

// The larger of each pair of lanes, the second where either is NaN (x86's
// vmaxps; GCC makes a compare and a blend of the same select).
inline Floats Larger(Floats a, Floats b) {
#if defined(__AVX512F__)
  return Floats(_mm512_max_ps(__m512(a), __m512(b)));
#else
  return a > b ? a : b;
#endif
}

// A running max over lanes, four of them to keep the compares independent,
// and whether a NaN was seen (a compare drops NaNs; the max must not).
struct RunningMax {
  Floats top[4];
  Ints nan[4];

  RunningMax() {
    for (int k = 0; k < 4; ++k) {
      top[k] = Floats{} + kMinusInf;
      nan[k] = Ints{};
    }
  }
  void Add(int k, Floats x) {
    top[k] = Larger(x, top[k]);
    nan[k] |= (x != x);
  }
  // `x` with the lanes where `keep` is false left out.
  void AddMasked(Floats x, Ints keep) {
    Add(0, keep ? x : Floats{} + kMinusInf);
    nan[0] |= keep & (x != x);
  }
  // The max of the lanes, NaN where any lane saw one.
  float Value() const {
    const Floats t = Max(Max(top[0], top[1]), Max(top[2], top[3]));
    const Ints n = nan[0] | nan[1] | nan[2] | nan[3];
#if defined(__AVX512F__)
    // A shuffle tree: a row of 1000 logits is only 16 steps of the bulk loop.
    const bool any_nan = _mm512_test_epi32_mask(__m512i(n), __m512i(n)) != 0;
    return any_nan ? kNaN : _mm512_reduce_max_ps(__m512(t));
#else
    float best = kMinusInf;
    bool any_nan = false;
    for (int i = 0; i < kLanes; ++i) {
      best = t[i] > best ? t[i] : best;
      any_nan |= n[i] != 0;
    }
    return any_nan ? kNaN : best;
#endif
  }
  static Floats Max(Floats a, Floats b) { return a > b ? a : b; }
};

// exp(x) for x <= 0 (logits less their row max; minus a magnitude), NaN
// kept: Cody and Waite's reduction x = n ln 2 + r, |r| <= ln 2 / 2, Cephes'
// polynomial for exp(r) (within about an ulp), and 2^n from the exponent
// bits. Below -87.3 (where exp is under float32's least normal) it returns
// about 1.2e-38, not the subnormal or 0: a row sum holds exp(0) = 1, and its
// squares underflow.
inline Floats Exp(Floats x) {
#if defined(__AVX512F__)
  // vmaxps returns its second operand where either is NaN: a NaN stays.
  const __m512 v = _mm512_max_ps(_mm512_set1_ps(-87.33f), __m512(x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), v);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return Floats(_mm512_scalef_ps(p, n));
#else
  const Floats lowest = Floats{} + -87.33f;
  x = x < lowest ? lowest : x;  // a NaN compares false and stays
  // Round to nearest by the 1.5 * 2^23 trick (|x log2 e| < 2^22 here).
  const Floats magic = Floats{} + 12582912.0f;
  const Floats n = (x * 1.44269504f + magic) - magic;
  Floats r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  Floats p = Floats{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + (r + 1.0f);
  // 2^n for n in [-126, 0]; a NaN's n gives any scale, and p is NaN.
  const Ints bits = (__builtin_convertvector(n, Ints) + 127) << 23;
  Floats scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
#endif
}

// float32 to the logits' type: bfloat16 rounded to nearest even, NaN kept
// (as XLA's conversion).
inline void Store(float* out, Floats g) { std::memcpy(out, &g, sizeof g); }
inline void Store(uint16_t* out, Floats g) {
#if defined(__AVX512BF16__)
  const __m256bh h = _mm512_cvtneps_pbh(__m512(g));
  std::memcpy(out, &h, sizeof h);
#else
  Words u;
  std::memcpy(&u, &g, sizeof u);
  const Words rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const Words bits = g != g ? (u >> 16) | 0x40u : rounded;
  const Halves h = __builtin_convertvector(bits, Halves);
  std::memcpy(out, &h, sizeof h);
#endif
}

// One core's loads alone fall short of its share of the memory bandwidth
// here; prefetching 8 KiB ahead brings them near a read's speed
// (docs/measurement.md). Prefetches never fault, past the end of the logits
// included.
constexpr int64_t kPrefetchBytes = 8192;

// Fetches the `bytes` that lie kPrefetchBytes past `at` (a step of a loop).
inline void FetchAhead(const void* at, int64_t bytes) {
  const char* ahead = static_cast<const char*>(at) + kPrefetchBytes;
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(ahead + b);
}

// The bulk of a range: float32 four vectors a step, the 256 bytes 8 KiB
// ahead prefetched. The running max is copied into locals for the loop:
// through the reference, GCC stores it back every step (the logits' loads
// might alias it).
inline int64_t AddBulk(const float* z, int64_t n, RunningMax& acc) {
  RunningMax local = acc;
  int64_t i = 0;
  for (; i + 4 * kLanes <= n; i += 4 * kLanes) {
    for (int k = 0; k < 4; ++k) __builtin_prefetch(z + i + kPrefetchBytes / 4 + k * kLanes);
    for (int k = 0; k < 4; ++k) local.Add(k, Load(z + i + k * kLanes));
  }
  acc = local;
  return i;
}

// bfloat16 as 32-bit words, two values each: the low halves shifted up and
// the high halves masked are two vectors of float32 (a max needs no order),
// prefetched as float32's.
inline int64_t AddBulk(const uint16_t* z, int64_t n, RunningMax& acc) {
  const Words high = Words{} + 0xFFFF0000u;
  const Words magnitude = Words{} + 0x7FFF7FFFu, beyond_inf = Words{} + 0x007F007Fu;
  Words nan_bits = Words{};
  RunningMax local = acc;
  int64_t i = 0;
  for (; i + 4 * kLanes <= n; i += 4 * kLanes) {
    __builtin_prefetch(z + i + kPrefetchBytes / 2);
    __builtin_prefetch(z + i + kPrefetchBytes / 2 + 2 * kLanes);
    for (int k = 0; k < 2; ++k) {
      Words w;
      std::memcpy(&w, z + i + 2 * k * kLanes, sizeof w);
      Words low = w << 16, top = w & high;
      Floats a, b;
      std::memcpy(&a, &low, sizeof a);
      std::memcpy(&b, &top, sizeof b);
      local.top[2 * k] = Larger(a, local.top[2 * k]);
      local.top[2 * k + 1] = Larger(b, local.top[2 * k + 1]);
      // A half is NaN where its magnitude bits exceed inf's, 0x7F80: adding
      // 0x7F to each half's magnitude then sets its bit 15 (no carry leaves a half).
      nan_bits |= (w & magnitude) + beyond_inf;
    }
  }
  local.nan[0] |= Ints((nan_bits & 0x80008000u) != 0);
  acc = local;
  return i;
}

// Which lanes of the vector that starts at `start` hold indices in
// [begin, end): a range's tail masked out of a whole vector.
inline Ints LanesIn(int64_t start, int64_t begin, int64_t end) {
  Ints index;
  for (int i = 0; i < kLanes; ++i) index[i] = int32_t(start + i);
  return (index >= int32_t(begin)) & (index < int32_t(end));
}

// max over row[begin, end) into `acc`, for rows of at least kLanes values:
// whole vectors, then one more ending at `end` (a max may see a value twice),
// or a vector masked to the range where it is shorter than one.
template <typename T>
void AddRange(const T* row, int64_t columns, int64_t begin, int64_t end, RunningMax& acc) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  if (n < kLanes) {
    const int64_t start = std::min(begin, columns - kLanes);
    acc.AddMasked(Load(row + start), LanesIn(start, begin, end));
    return;
  }
  int64_t i = begin + AddBulk(row + begin, n, acc);
  for (; i + kLanes <= end; i += kLanes) acc.Add(0, Load(row + i));
  if (i < end) acc.Add(1, Load(row + end - kLanes));
}

// Chunks of rows taken from a shared counter by the calling thread and by
// tasks on XLA's intra-op pool; the caller waits only for chunks that were
// taken, so a task that starts late (or runs inline) finds nothing to do.
struct Progress {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

// `rows_of(first, last)` for every chunk of rows, on all threads.
template <typename RowsOf>
void ForRowChunks(ffi::ThreadPool& pool, int64_t rows, int64_t columns, RowsOf rows_of) {
  // Up to 4 MiB of float32 logits a chunk, four chunks or more for each
  // thread, and at least 256 KiB: each chunk starts its rows' prefetches
  // afresh, so chunks of 256 KiB measured slower where there are rows
  // enough; smaller logits take one chunk, on the calling thread (waking
  // the pool's threads costs more than such a call; docs/measurement.md).
  const int64_t threads = int64_t(pool.num_threads()) + 1, width = std::max<int64_t>(columns, 1);
  const int64_t chunk = std::max<int64_t>(
      {int64_t(1), (int64_t(1) << 16) / width,
       std::min<int64_t>((int64_t(1) << 20) / width, (rows + 4 * threads - 1) / (4 * threads))});
  const int64_t chunks = (rows + chunk - 1) / chunk;
  auto progress = std::make_shared<Progress>();
  auto work = [=]() {
    for (int64_t c; (c = progress->next.fetch_add(1)) < chunks;) {
      rows_of(c * chunk, std::min(rows, (c + 1) * chunk));
      progress->done.fetch_add(1);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks - 1);
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([work]() { work(); });
  work();
  while (progress->done.load() < chunks) std::this_thread::yield();
}

// The rows and classes of logits [..., C], checked against the outputs' and
// the labels' one value a row.
inline ffi::Error RowsAndColumns(const ffi::AnyBuffer& logits, size_t per_row_values,
                                 int64_t& rows, int64_t& columns) {
  const auto dims = logits.dimensions();
  if (dims.size() < 1) return ffi::Error::InvalidArgument("logits need a class axis");
  columns = dims.back();
  if (columns == 0) return ffi::Error::InvalidArgument("logits need at least one class");
  rows = int64_t(logits.element_count()) / columns;
  if (int64_t(per_row_values) != rows)
    return ffi::Error::InvalidArgument("labels and outputs need one value per row of logits");
  return ffi::Error::Success();
}

// `body(logits)` with the logits as `const float*` or, for bfloat16, as
// their bits, `const uint16_t*`.
template <typename Body>
ffi::Error WithLogits(const ffi::AnyBuffer& logits, Body body) {
  switch (logits.element_type()) {
    case ffi::DataType::F32:
      body(logits.typed_data<float>());
      return ffi::Error::Success();
    case ffi::DataType::BF16:
      body(static_cast<const uint16_t*>(logits.untyped_data()));
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument("logits must be float32 or bfloat16");
  }
}

}  // namespace lossjax

// The handlers' bindings, read left to right: XLA's intra-op threads and the
// logits, then the labels and further float32 operands, then float32 results.
#define LOSSJAX_BIND_LOGITS \
  lossjax::ffi::Ffi::Bind().Ctx<lossjax::ffi::ThreadPool>().Arg<lossjax::ffi::AnyBuffer>()
#define LOSSJAX_LABELS .Arg<lossjax::ffi::Buffer<lossjax::ffi::S32>>()
#define LOSSJAX_F32_OPERAND .Arg<lossjax::ffi::Buffer<lossjax::ffi::F32>>()
#define LOSSJAX_F32_RESULT .Ret<lossjax::ffi::Buffer<lossjax::ffi::F32>>()

#endif  // LOSSJAX_NATIVE_ROWS_H_
