// Sparsemax's threshold from one pass over the logits: for each row, tau
// with sum_c relu(z_c - tau) = 1, the support's size |S| = #{c : z_c > tau}
// and ||p||^2 = sum_c relu(z_c - tau)^2. XLA:CPU's form needs the block
// maxima, an insertion network over them and a count at their threshold,
// three passes and more (docs/measurement.md); here each row is read once
// from memory and then searched in cache.
//
// An XLA FFI handler (lossjax/_native/__init__.py builds and registers it):
//   logits [..., C] float32 or bfloat16 (and labels [...] int32)
//   -> tau [...], support [...], squares [...] (and the label's logit [...]),
//      float32 each
// Per row: the max m, and the candidates z > m - 1 (tau >= m - 1: the max
// alone adds relu(m - tau) <= 1 to a sum that is 1), in two passes, the
// second from cache, or in one for long rows; then tau from the candidates
// alone: by their ranks where at most 16 (AVX-512), else by Michelot's
// rounds in float64. A row with a NaN gives NaN for all three, as does a row
// whose max is infinite (there relu(z - tau) is inf - inf).

#include "rows.h"

namespace lossjax {
namespace {

// The float just below x (finite x): every logit above the exact m - 1 lies
// above m - 1 rounded and then lowered by this.
inline float Lowered(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  if (x == 0.0f) bits = 0x80000001u;
  else bits += x > 0.0f ? -1 : 1;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

#if defined(__AVX512F__)
// Above's compare with AVX-512: above the level, or NaN (not <=, unordered),
// so that a row's NaNs come out among its candidates and the max need not
// look for them.
constexpr int kAboveOrNaN = _CMP_NLE_UQ;

// The four vectors of logits at row[c, c + 4 kLanes), as float32 (bfloat16
// as 32-bit words, two values each, as `AddBulk`: the candidates come out in
// another order, which the search ignores).
template <typename T>
inline void LoadFour(const T* row, int64_t c, __m512 (&x)[4]) {
  if constexpr (sizeof(T) == 2) {
    const __m512i high = _mm512_set1_epi32(int32_t(0xFFFF0000u));
    for (int k = 0; k < 2; ++k) {
      const __m512i w = _mm512_loadu_si512(row + c + 2 * k * kLanes);
      x[2 * k] = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
      x[2 * k + 1] = _mm512_castsi512_ps(_mm512_and_si512(w, high));
    }
  } else {
    for (int k = 0; k < 4; ++k) x[k] = __m512(Load(row + c + k * kLanes));
  }
}

// Appends x's lanes in `keep` to out[count...].
inline void Keep(__m512 x, __mmask16 keep, float* out, int64_t& count) {
  _mm512_storeu_ps(out + count, _mm512_maskz_compress_ps(keep, x));
  count += __builtin_popcount(keep);
}

#endif

// Rows at least this long take their max and candidates in one pass
// (`MaxAndCandidates`); shorter ones in two, the second from cache.
constexpr int64_t kOnePassFrom = 4096;

// The logits of row[0, columns) above `level`, written to `out` (room for
// `columns` + kLanes values); returns how many. With AVX-512, each vector's
// lanes above the level are compressed to its front and the whole vector
// stored (a row's few candidates lie at random places, and a branch on
// each vector mispredicts: docs/measurement.md); elsewhere a vector
// compare, then the rare vectors with any such lane one value at a time.
//
// float32 rows also fetch the same bytes of the next row each step, so that
// its max (memory) overlaps this row's candidates (compute); bfloat16 rows
// gained nothing from it beside the row after next's prefetch in `Rows`
// (docs/measurement.md).
template <typename T>
int64_t Above(const T* row, int64_t columns, float level, float* out) {
  int64_t count = 0, c = 0;
#if defined(__AVX512F__)
  const __m512 bar = _mm512_set1_ps(level);
  const char* next = reinterpret_cast<const char*>(row + columns);
  for (; c + 4 * kLanes <= columns; c += 4 * kLanes) {
    if constexpr (sizeof(T) == 4)
      for (int64_t b = 0; b < 4 * kLanes * 4; b += 64) __builtin_prefetch(next + 4 * c + b);
    __m512 x[4];
    LoadFour(row, c, x);
    for (int k = 0; k < 4; ++k) Keep(x[k], _mm512_cmp_ps_mask(x[k], bar, kAboveOrNaN), out, count);
  }
  for (; c + kLanes <= columns; c += kLanes) {
    const __m512 x = __m512(Load(row + c));
    Keep(x, _mm512_cmp_ps_mask(x, bar, kAboveOrNaN), out, count);
  }
  if (c < columns && columns >= kLanes) {
    // The last vector ends at the row's end, its lanes already seen left out.
    const int64_t start = columns - kLanes;
    const __m512 x = __m512(Load(row + start));
    const __mmask16 fresh = __mmask16(0xFFFFu << (c - start));
    Keep(x, _mm512_mask_cmp_ps_mask(fresh, x, bar, kAboveOrNaN), out, count);
    c = columns;
  }
#else
  const Floats bar = Floats{} + level;
  for (; c + kLanes <= columns; c += kLanes) {
    const Floats x = Load(row + c);
    const Ints above = x > bar;
    int32_t any = 0;
    for (int i = 0; i < kLanes; ++i) any |= above[i];
    if (!any) continue;
    for (int i = 0; i < kLanes; ++i)
      if (above[i]) out[count++] = x[i];
  }
#endif
  for (; c < columns; ++c) {
    const float x = LoadOne(row[c]);
    if (!(x <= level)) out[count++] = x;  // or NaN, as kAboveOrNaN
  }
  return count;
}

#if defined(__AVX512F__)
// The max of four vectors' lanes.
inline float LargestOf(const __m512 (&top)[4]) {
  return _mm512_reduce_max_ps(
      _mm512_max_ps(_mm512_max_ps(top[0], top[1]), _mm512_max_ps(top[2], top[3])));
}

// The max of a row of at least kLanes logits, its NaNs left out (x86's max
// returns its second operand where either is NaN).
template <typename T>
float MaxLeavingNaN(const T* row, int64_t columns) {
  __m512 top[4];
  for (int k = 0; k < 4; ++k) top[k] = _mm512_set1_ps(kMinusInf);
  int64_t c = 0;
  for (; c + 4 * kLanes <= columns; c += 4 * kLanes) {
    __m512 x[4];
    LoadFour(row, c, x);
    for (int k = 0; k < 4; ++k) top[k] = _mm512_max_ps(x[k], top[k]);
  }
  for (; c + kLanes <= columns; c += kLanes) top[0] = _mm512_max_ps(__m512(Load(row + c)), top[0]);
  if (c < columns) top[1] = _mm512_max_ps(__m512(Load(row + columns - kLanes)), top[1]);
  return LargestOf(top);
}

// A long row's max and candidates in one pass: the logits above (the running
// max - 1), or NaN, the level raised every 16 steps of 4 vectors, skipping on
// a branch the steps with none (few, in a long row: predictable); then those
// above the final max - 1 kept. `out` has room for `columns` + kLanes values.
template <typename T>
float MaxAndCandidates(const T* row, int64_t columns, float* out, int64_t& taken) {
  __m512 top[4];
  for (int k = 0; k < 4; ++k) top[k] = _mm512_set1_ps(kMinusInf);
  __m512 bar = _mm512_set1_ps(kMinusInf);
  int64_t count = 0, c = 0;
  for (int64_t step = 0; c + 4 * kLanes <= columns; c += 4 * kLanes, ++step) {
    __m512 x[4];
    LoadFour(row, c, x);
    __mmask16 above[4];
    for (int k = 0; k < 4; ++k) {
      top[k] = _mm512_max_ps(x[k], top[k]);
      above[k] = _mm512_cmp_ps_mask(x[k], bar, kAboveOrNaN);
    }
    if (above[0] | above[1] | above[2] | above[3])
      for (int k = 0; k < 4; ++k) Keep(x[k], above[k], out, count);
    if (step % 16 == 0) bar = _mm512_set1_ps(Lowered(LargestOf(top) - 1.0f));
  }
  for (; c + kLanes <= columns; c += kLanes) {
    const __m512 x = __m512(Load(row + c));
    top[0] = _mm512_max_ps(x, top[0]);
    Keep(x, _mm512_cmp_ps_mask(x, bar, kAboveOrNaN), out, count);
  }
  if (c < columns) {
    const int64_t start = columns - kLanes;
    const __m512 x = __m512(Load(row + start));
    top[1] = _mm512_max_ps(x, top[1]);
    Keep(x, _mm512_mask_cmp_ps_mask(__mmask16(0xFFFFu << (c - start)), x, bar, kAboveOrNaN), out,
         count);
  }
  const float m = LargestOf(top);
  // In place: each vector is stored at or before where it was read.
  const __m512 level = _mm512_set1_ps(Lowered(m - 1.0f));
  taken = 0;
  for (int64_t i = 0; i < count; i += kLanes) {
    const __mmask16 valid =
        count - i >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << (count - i)) - 1);
    const __m512 x = _mm512_maskz_loadu_ps(valid, out + i);
    Keep(x, _mm512_mask_cmp_ps_mask(valid, x, level, kAboveOrNaN), out, taken);
  }
  return m;
}
#endif

template <typename T>
float RowMax(const T* row, int64_t columns) {
  if (columns < kLanes) {
    float best = kMinusInf;
    for (int64_t c = 0; c < columns; ++c) {
      const float x = LoadOne(row[c]);
      if (x != x) return kNaN;
      best = x > best ? x : best;
    }
    return best;
  }
  RunningMax acc;
  AddRange(row, columns, 0, columns, acc);
  return acc.Value();
}

constexpr int64_t kPrefetchRowBytes = 8192;

// A row's threshold, support size and ||p||^2 (at the threshold as rounded).
struct Solution {
  float tau;
  float size;
  float squares;
};

// Michelot's rounds on the candidates from t = m - 1, in float64.
inline Solution Michelot(const float* candidates, int64_t taken, float top) {
  double t = double(top) - 1.0;
  int64_t size = -1;
  // Each round but the last leaves a candidate out: at most one round more
  // than there are candidates (a bound against rounding, never reached).
  for (int64_t round = 0; round <= taken; ++round) {
    int64_t count = 0;
    double sum = 0.0;
    // No branch: which candidates stay is no pattern a predictor learns.
    for (int64_t i = 0; i < taken; ++i) {
      const bool in = candidates[i] > t;
      count += in;
      sum += in ? double(candidates[i]) : 0.0;
    }
    if (count == size) break;
    size = count;
    t = (sum - 1.0) / double(count);
  }
  const float threshold = float(t);
  double squares = 0.0;
  for (int64_t i = 0; i < taken; ++i) {
    const double excess = std::max(double(candidates[i]) - double(threshold), 0.0);
    squares += excess * excess;
  }
  return {threshold, float(size), float(squares)};
}

#if defined(__AVX512F__)
// The same from at most kLanes candidates, with no rounds: sorted, a value
// c of rank r (counting ties: the values >= c) is in the support iff
// 1 + r c > the sum of the r largest, |S| is the largest such r, and the
// support is the values of rank <= |S|. Each lane's rank and sum come from
// all lanes at once, a compare and two masked adds for each lane in turn
// (the rounds wait on one another, a division each: docs/measurement.md).
// The sums are float32, relative to m, of values in [-1, 0]; the lanes past
// the candidates are -inf and never count.
inline Solution FewCandidates(const float* candidates, int64_t taken, float top) {
  const __mmask16 valid = __mmask16((1u << taken) - 1);
  const __m512 raw = _mm512_maskz_loadu_ps(valid, candidates);
  const __m512 below = _mm512_sub_ps(raw, _mm512_set1_ps(top));
  const __m512 shifted = _mm512_mask_blend_ps(valid, _mm512_set1_ps(kMinusInf), below);
  alignas(64) float each[kLanes];
  _mm512_store_ps(each, shifted);
  __m512i rank = _mm512_setzero_si512();
  __m512 sum = _mm512_setzero_ps();
  const __m512i one = _mm512_set1_epi32(1);
  for (int j = 0; j < kLanes; ++j) {
    const __m512 value = _mm512_set1_ps(each[j]);
    const __mmask16 counted = _mm512_cmp_ps_mask(value, shifted, _CMP_GE_OQ);
    rank = _mm512_mask_add_epi32(rank, counted, rank, one);
    sum = _mm512_mask_add_ps(sum, counted, sum, value);
  }
  const __m512 test = _mm512_fmadd_ps(_mm512_cvtepi32_ps(rank), shifted, _mm512_set1_ps(1.0f));
  const __mmask16 in = _mm512_mask_cmp_ps_mask(valid, test, sum, _CMP_GT_OQ);
  const int size = _mm512_mask_reduce_max_epi32(in, rank);
  const __mmask16 support =
      _mm512_mask_cmp_epi32_mask(valid, rank, _mm512_set1_epi32(size), _MM_CMPINT_LE);
  const double excess_sum = _mm512_mask_reduce_add_ps(support, shifted);
  const float threshold = float(double(top) + (excess_sum - 1.0) / double(size));
  const __m512 excess = _mm512_maskz_sub_ps(support, raw, _mm512_set1_ps(threshold));
  const __m512 positive = _mm512_max_ps(excess, _mm512_setzero_ps());
  return {threshold, float(size), _mm512_reduce_add_ps(_mm512_mul_ps(positive, positive))};
}
#endif

template <typename T>
void Rows(const T* logits, const int32_t* labels, float* tau, float* support, float* squares,
          float* true_logit, int64_t first, int64_t last, int64_t columns) {
  std::unique_ptr<float[]> room(new float[columns + kLanes]);
  float* const candidates = room.get();
  const int64_t ahead = std::min<int64_t>(columns * sizeof(T), kPrefetchRowBytes);
  for (int64_t r = first; r < last; ++r) {
    const T* row = logits + r * columns;
    // The row after next's first bytes fetched while this one is searched.
    const char* next = reinterpret_cast<const char*>(row + 2 * columns);
    for (int64_t b = 0; b < ahead; b += 64) __builtin_prefetch(next + b);
    if (labels) {
      const int64_t label = labels[r];
      true_logit[r] = label < 0 || label >= columns ? kNaN : LoadOne(row[label]);
    }
    float top;
    int64_t taken = 0;
#if defined(__AVX512F__)
    if (columns >= kOnePassFrom) {
      top = MaxAndCandidates(row, columns, candidates, taken);
    } else {
      top = columns >= kLanes ? MaxLeavingNaN(row, columns) : RowMax(row, columns);
      if (std::isfinite(top)) taken = Above(row, columns, Lowered(top - 1.0f), candidates);
    }
#else
    top = RowMax(row, columns);
    if (std::isfinite(top)) taken = Above(row, columns, Lowered(top - 1.0f), candidates);
#endif
    if (!std::isfinite(top)) {
      tau[r] = support[r] = squares[r] = kNaN;
      continue;
    }
    bool any_nan = false;
    for (int64_t i = 0; i < taken; ++i) any_nan |= candidates[i] != candidates[i];
    if (any_nan) {
      tau[r] = support[r] = squares[r] = kNaN;
      continue;
    }
#if defined(__AVX512F__)
    const Solution s = taken <= kLanes ? FewCandidates(candidates, taken, top)
                                       : Michelot(candidates, taken, top);
#else
    const Solution s = Michelot(candidates, taken, top);
#endif
    tau[r] = s.tau;
    support[r] = s.size;
    squares[r] = s.squares;
  }
}

// The handlers' shared body: `labels` and `true_logit` null for the
// threshold alone (sparsemax's projection).
ffi::Error Solve(ffi::ThreadPool& pool, const ffi::AnyBuffer& logits, const int32_t* labels,
                 size_t rows_given, float* tau, float* support, float* squares,
                 float* true_logit) {
  int64_t rows, columns;
  if (auto error = RowsAndColumns(logits, rows_given, rows, columns); error.failure())
    return error;
  return WithLogits(logits, [&](auto z) {
    ForRowChunks(pool, rows, columns, [=](int64_t first, int64_t last) {
      Rows(z, labels, tau, support, squares, true_logit, first, last, columns);
    });
  });
}

ffi::Error Threshold(ffi::ThreadPool pool, ffi::AnyBuffer logits, ffi::ResultBuffer<ffi::F32> tau,
                     ffi::ResultBuffer<ffi::F32> support, ffi::ResultBuffer<ffi::F32> squares) {
  return Solve(pool, logits, nullptr, tau->element_count(), tau->typed_data(),
               support->typed_data(), squares->typed_data(), nullptr);
}

// The loss's statistics: the threshold's and the label's logit (NaN for a
// label outside [0, C)), from the same pass.
ffi::Error LossStatistics(ffi::ThreadPool pool, ffi::AnyBuffer logits,
                          ffi::Buffer<ffi::S32> labels, ffi::ResultBuffer<ffi::F32> tau,
                          ffi::ResultBuffer<ffi::F32> support, ffi::ResultBuffer<ffi::F32> squares,
                          ffi::ResultBuffer<ffi::F32> true_logit) {
  return Solve(pool, logits, labels.typed_data(), labels.element_count(), tau->typed_data(),
               support->typed_data(), squares->typed_data(), true_logit->typed_data());
}

}  // namespace
}  // namespace lossjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(LossjaxSparsemaxThreshold, lossjax::Threshold,
                              LOSSJAX_BIND_LOGITS
                                  LOSSJAX_F32_RESULT LOSSJAX_F32_RESULT LOSSJAX_F32_RESULT);

XLA_FFI_DEFINE_HANDLER_SYMBOL(LossjaxSparsemaxLossStatistics, lossjax::LossStatistics,
                              LOSSJAX_BIND_LOGITS LOSSJAX_LABELS LOSSJAX_F32_RESULT
                                  LOSSJAX_F32_RESULT LOSSJAX_F32_RESULT LOSSJAX_F32_RESULT);
