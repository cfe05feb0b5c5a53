// The softmax losses' row statistics in one pass over the logits from
// memory: the row max m, sum_c exp(z_c - m), the label's own logit, and where
// a loss asks for them sum_c exp(2 (z_c - m)) (Brier's sum of squared
// probabilities) or sum_c z_c (label smoothing's). XLA:CPU takes each row sum
// in a pass of its own over the logits and cannot take two sums of one
// exponential in one (docs/measurement.md); here the row is read from memory
// once for its max and then again from the cache for the sums.
//
// XLA FFI handlers (lossjax/_native/__init__.py builds and registers them):
//   logits [..., C] float32 or bfloat16, labels [...] int32
//   -> true_logit, max, sum_c exp(z_c - max) [...] float32 each
//      (and sum_c exp(2 (z_c - max)), or sum_c z_c)
// The statistics follow the plain formulas: a NaN anywhere in a row makes its
// max and sums NaN, a row with +inf (or only -inf) has a NaN sum of
// exponentials (inf - inf), as XLA's own `max + log sum exp(z - max)`. A label
// outside [0, C) gives a NaN true logit.
//
// And the gradient, for the softmax losses' derivative
// (lossjax/_softmax_functionals.py):
//   logits [..., C], labels [...] int32, shift [...] float32, coefficients
//   [..., 3] (a, b, s) or [..., 4] (a, b, q, s) float32
//   -> g [..., C] in the logits' type, g_c = b e_c + q e_c^2 + s + a [c = y],
//      e_c = exp(z_c - shift), computed in float32 and rounded once
// in one pass over the logits, written as it goes. A label outside [0, C)
// adds nothing.

#include <type_traits>

#include "rows.h"

namespace lossjax {
namespace {

// What a row's second pass adds up, four accumulators each to keep the adds
// independent.
struct Sums {
  Floats exps[4], squares[4], logits[4];
  Sums() {
    for (int k = 0; k < 4; ++k) exps[k] = squares[k] = logits[k] = Floats{};
  }
  static float Total(const Floats (&parts)[4]) {
    const Floats t = (parts[0] + parts[1]) + (parts[2] + parts[3]);
    float total = 0.0f;
    for (int i = 0; i < kLanes; ++i) total += t[i];
    return total;
  }
};

// Adds one vector of logits (`keep`'s lanes only, where given) to the sums.
template <bool kSquares, bool kRowSum>
inline void AddVector(Sums& s, int k, Floats z, Floats top, const Ints* keep) {
  Floats e = Exp(z - top);
  if (keep) {
    e = *keep ? e : Floats{};
    z = *keep ? z : Floats{};
  }
  s.exps[k] += e;
  if (kSquares) s.squares[k] += e * e;
  if (kRowSum) s.logits[k] += z;
}

// The sums of one row, for rows of at least kLanes logits: four vectors a
// step, then single vectors, then one masked to the rest. Each step fetches
// the same bytes of the next row (`next`), whose max then reads from cache:
// the row's exponentials are compute, its max's pass memory, and without the
// prefetch the two take turns (docs/measurement.md). Prefetches never
// fault, past the logits' end included.
template <bool kSquares, bool kRowSum, typename T>
Sums RowSums(const T* row, int64_t columns, float max, const T* next) {
  const Floats top = Floats{} + max;
  Sums s;
  int64_t i = 0;
  for (; i + 4 * kLanes <= columns; i += 4 * kLanes) {
    const char* ahead = reinterpret_cast<const char*>(next + i);
    for (int64_t b = 0; b < 4 * kLanes * int64_t(sizeof(T)); b += 64) __builtin_prefetch(ahead + b);
    for (int k = 0; k < 4; ++k)
      AddVector<kSquares, kRowSum>(s, k, Load(row + i + k * kLanes), top, nullptr);
  }
  for (; i + kLanes <= columns; i += kLanes)
    AddVector<kSquares, kRowSum>(s, 0, Load(row + i), top, nullptr);
  if (i < columns) {
    const int64_t start = columns - kLanes;
    const Ints keep = LanesIn(start, i, columns);
    AddVector<kSquares, kRowSum>(s, 1, Load(row + start), top, &keep);
  }
  return s;
}

// Rows narrower than a vector, one logit at a time.
template <typename T>
void NarrowRow(const T* row, int64_t columns, float* max, float* exps, float* squares,
               float* logits) {
  float top = kMinusInf;
  bool nan = false;
  for (int64_t c = 0; c < columns; ++c) {
    const float x = LoadOne(row[c]);
    nan |= x != x;
    top = x > top ? x : top;
  }
  if (nan) top = kNaN;
  float e = 0.0f, e2 = 0.0f, z = 0.0f;
  for (int64_t c = 0; c < columns; ++c) {
    const float x = LoadOne(row[c]);
    const float v = std::exp(x - top);
    e += v;
    e2 += v * v;
    z += x;
  }
  *max = top;
  *exps = e;
  if (squares) *squares = e2;
  if (logits) *logits = z;
}

// The statistics of rows [first, last); `squares` and `logits` (the row
// sums) null where not asked for.
template <bool kSquares, bool kRowSum, typename T>
void Rows(const T* z, const int32_t* labels, float* true_logit, float* max, float* exps,
          float* squares, float* logits, int64_t first, int64_t last, int64_t columns) {
  for (int64_t r = first; r < last; ++r) {
    const T* row = z + r * columns;
    true_logit[r] = LabelLogit(row, labels[r], columns);
    if (columns < kLanes) {
      NarrowRow(row, columns, max + r, exps + r, kSquares ? squares + r : nullptr,
                kRowSum ? logits + r : nullptr);
      continue;
    }
    RunningMax acc;
    AddRange(row, columns, 0, columns, acc);
    max[r] = acc.Value();
    const Sums s = RowSums<kSquares, kRowSum>(row, columns, max[r], row + columns);
    exps[r] = Sums::Total(s.exps);
    if (kSquares) squares[r] = Sums::Total(s.squares);
    if (kRowSum) logits[r] = Sums::Total(s.logits);
  }
}

// The handlers' shared body.
template <bool kSquares, bool kRowSum>
ffi::Error Statistics(ffi::ThreadPool& pool, const ffi::AnyBuffer& logits,
                      const ffi::Buffer<ffi::S32>& labels, float* true_logit, float* max,
                      float* exps, float* extra) {
  int64_t rows, columns;
  if (auto error = RowsAndColumns(logits, labels.element_count(), rows, columns); error.failure())
    return error;
  const int32_t* y = labels.typed_data();
  float* squares = kSquares ? extra : nullptr;
  float* sums = kRowSum ? extra : nullptr;
  return WithLogits(logits, [&](auto z) {
    ForRowChunks(pool, rows, columns, [=](int64_t first, int64_t last) {
      Rows<kSquares, kRowSum>(z, y, true_logit, max, exps, squares, sums, first, last, columns);
    });
  });
}

// The cotangent's coefficients of one row: g_c = (squares e_c + exps) e_c +
// plus, e_c = exp(z_c - shift), and `at_label` more at the label.
struct Coefficients {
  float shift, at_label, exps, squares, plus;
};

template <bool kSquares>
inline Floats Cotangent(Floats z, const Coefficients& k) {
  const Floats e = Exp(z - k.shift);
  return kSquares ? (k.squares * e + k.exps) * e + k.plus : k.exps * e + k.plus;
}

// One row of the gradient, for rows of at least kLanes logits: whole
// vectors, then one ending at the row's end (its lanes already written get
// the same values again), then the label's own entry.
template <bool kSquares, typename T>
void CotangentRow(const T* row, T* out, int64_t columns, int64_t label, const Coefficients& k) {
  int64_t i = 0;
  for (; i + kLanes <= columns; i += kLanes) Store(out + i, Cotangent<kSquares>(Load(row + i), k));
  if (i < columns) {
    const int64_t start = columns - kLanes;
    Store(out + start, Cotangent<kSquares>(Load(row + start), k));
  }
  if (label < 0 || label >= columns) return;
  // The label's vector again, its entry with `at_label` added: one rounding.
  const int64_t start = std::min(label, columns - kLanes);
  Floats g = Cotangent<kSquares>(Load(row + start), k);
  g[label - start] += k.at_label;
  Store(out + start, g);
}

// Rows narrower than a vector: padded to one in float32.
template <bool kSquares, typename T>
void NarrowCotangentRow(const T* row, T* out, int64_t columns, int64_t label,
                        const Coefficients& k) {
  Floats z = Floats{};
  for (int64_t c = 0; c < columns; ++c) z[c] = LoadOne(row[c]);
  Floats g = Cotangent<kSquares>(z, k);
  if (label >= 0 && label < columns) g[label] += k.at_label;
  T padded[kLanes];
  Store(padded, g);
  std::memcpy(out, padded, columns * sizeof(T));
}

// The gradient of the softmax statistics' row functionals, `coefficients`
// [..., 3] (at_label, exps, plus) or [..., 4] (at_label, exps, squares, plus).
template <bool kSquares>
ffi::Error Cotangents(ffi::ThreadPool& pool, const ffi::AnyBuffer& logits,
                      const ffi::Buffer<ffi::S32>& labels, const ffi::Buffer<ffi::F32>& shift,
                      const ffi::Buffer<ffi::F32>& coefficients, ffi::Result<ffi::AnyBuffer> out) {
  int64_t rows, columns;
  if (auto error = RowsAndColumns(logits, labels.element_count(), rows, columns); error.failure())
    return error;
  if (int64_t(shift.element_count()) != rows ||
      int64_t(coefficients.element_count()) != rows * (kSquares ? 4 : 3) ||
      out->element_type() != logits.element_type() ||
      out->element_count() != logits.element_count())
    return ffi::Error::InvalidArgument("shift, coefficients and output do not match the logits");
  const int32_t* y = labels.typed_data();
  const float* c = shift.typed_data();
  const float* q = coefficients.typed_data();
  void* g = out->untyped_data();
  return WithLogits(logits, [&](auto z) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(z)>>;
    T* gradient = static_cast<T*>(g);
    ForRowChunks(pool, rows, columns, [=](int64_t first, int64_t last) {
      for (int64_t r = first; r < last; ++r) {
        const float* k = q + r * (kSquares ? 4 : 3);
        const Coefficients row_k{c[r], k[0], k[1], kSquares ? k[2] : 0.0f, k[kSquares ? 3 : 2]};
        if (columns < kLanes)
          NarrowCotangentRow<kSquares>(z + r * columns, gradient + r * columns, columns, y[r], row_k);
        else
          CotangentRow<kSquares>(z + r * columns, gradient + r * columns, columns, y[r], row_k);
      }
    });
  });
}

ffi::Error SoftmaxCotangent(ffi::ThreadPool pool, ffi::AnyBuffer logits,
                            ffi::Buffer<ffi::S32> labels, ffi::Buffer<ffi::F32> shift,
                            ffi::Buffer<ffi::F32> coefficients, ffi::Result<ffi::AnyBuffer> out) {
  const auto dims = coefficients.dimensions();
  if (dims.size() > 0 && dims[dims.size() - 1] == 4)
    return Cotangents<true>(pool, logits, labels, shift, coefficients, out);
  return Cotangents<false>(pool, logits, labels, shift, coefficients, out);
}

using F32Out = ffi::ResultBuffer<ffi::F32>;

ffi::Error SoftmaxStatistics(ffi::ThreadPool pool, ffi::AnyBuffer logits,
                             ffi::Buffer<ffi::S32> labels, F32Out true_logit, F32Out max,
                             F32Out exps) {
  return Statistics<false, false>(pool, logits, labels, true_logit->typed_data(),
                                  max->typed_data(), exps->typed_data(), nullptr);
}

ffi::Error SoftmaxStatisticsAndSquares(ffi::ThreadPool pool, ffi::AnyBuffer logits,
                                       ffi::Buffer<ffi::S32> labels, F32Out true_logit,
                                       F32Out max, F32Out exps, F32Out squares) {
  return Statistics<true, false>(pool, logits, labels, true_logit->typed_data(),
                                 max->typed_data(), exps->typed_data(), squares->typed_data());
}

ffi::Error SoftmaxStatisticsAndRowSum(ffi::ThreadPool pool, ffi::AnyBuffer logits,
                                      ffi::Buffer<ffi::S32> labels, F32Out true_logit,
                                      F32Out max, F32Out exps, F32Out sums) {
  return Statistics<false, true>(pool, logits, labels, true_logit->typed_data(),
                                 max->typed_data(), exps->typed_data(), sums->typed_data());
}

}  // namespace
}  // namespace lossjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(LossjaxSoftmaxStatistics, lossjax::SoftmaxStatistics,
                              LOSSJAX_BIND_LOGITS LOSSJAX_LABELS
                                  LOSSJAX_F32_RESULT LOSSJAX_F32_RESULT LOSSJAX_F32_RESULT);

XLA_FFI_DEFINE_HANDLER_SYMBOL(LossjaxSoftmaxStatisticsAndSquares,
                              lossjax::SoftmaxStatisticsAndSquares,
                              LOSSJAX_BIND_LOGITS LOSSJAX_LABELS LOSSJAX_F32_RESULT
                                  LOSSJAX_F32_RESULT LOSSJAX_F32_RESULT LOSSJAX_F32_RESULT);

XLA_FFI_DEFINE_HANDLER_SYMBOL(LossjaxSoftmaxStatisticsAndRowSum,
                              lossjax::SoftmaxStatisticsAndRowSum,
                              LOSSJAX_BIND_LOGITS LOSSJAX_LABELS LOSSJAX_F32_RESULT
                                  LOSSJAX_F32_RESULT LOSSJAX_F32_RESULT LOSSJAX_F32_RESULT);

XLA_FFI_DEFINE_HANDLER_SYMBOL(LossjaxSoftmaxCotangent, lossjax::SoftmaxCotangent,
                              LOSSJAX_BIND_LOGITS LOSSJAX_LABELS LOSSJAX_F32_OPERAND
                                  LOSSJAX_F32_OPERAND.Ret<lossjax::ffi::AnyBuffer>());

// Whether this build took the kernels' AVX-512 paths: lossjax uses the
// kernels by default only where it did, as their portable paths measured
// slower than XLA's own operations (lossjax/_native/__init__.py).
extern "C" int LossjaxNativeVectorized() {
#if defined(__AVX512F__)
  return 1;
#else
  return 0;
#endif
}
