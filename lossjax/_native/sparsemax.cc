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
// second from cache, or in one for long float32 rows; then tau from the
// candidates alone: by their ranks where at most 16 (AVX-512), else by
// Michelot's rounds in float64. A row with a NaN gives NaN for all three, as
// does a row whose max is infinite (there relu(z - tau) is inf - inf).

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
// The candidates' compare with AVX-512: above the level, or unordered (not
// <=). A long row's level is NaN while its running max is still -inf
// (Lowered(-inf)), and then every logit is kept. A row's NaNs are found in
// its first pass, apart.
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
  count += _mm_popcnt_u32(_cvtmask16_u32(keep));
}

// A group of four vectors' lanewise max (a NaN left out) ...
inline __m512 GroupMax(const __m512 (&x)[4]) {
  return _mm512_max_ps(_mm512_max_ps(x[0], x[1]), _mm512_max_ps(x[2], x[3]));
}

// ... and its lanes where any of the four is NaN.
inline __mmask16 GroupNaN(const __m512 (&x)[4]) {
  return _mm512_cmp_ps_mask(x[0], x[1], _CMP_UNORD_Q) | _mm512_cmp_ps_mask(x[2], x[3], _CMP_UNORD_Q);
}

// The candidates of a group whose max may pass `bar`, each vector's lanes
// above it compressed to its front and stored whole.
inline void KeepGroup(const __m512 (&x)[4], __m512 bar, float* out, int64_t& count) {
  for (int k = 0; k < 4; ++k) Keep(x[k], _mm512_cmp_ps_mask(x[k], bar, kAboveOrNaN), out, count);
}

#endif

// A row's candidates come from two passes, the second from cache through
// the first's maxima of spans of groups (`MaxAndSpanMaxima`, `AboveInSpans`):
// spans of one group in rows shorter than this; of kLongSpan groups in
// longer bfloat16 rows; longer float32 rows take one pass
// (`MaxAndCandidates`). A bfloat16 row's pass from cache runs at the
// speed of its instructions, which a compare on each group added to
// (docs/measurement.md); float32 rows, twice the bytes, wait on memory.
constexpr int64_t kLongFrom = 4096;
constexpr int64_t kLongSpan = 4;

// The logits of row[0, columns) above `level`, written to `out` (room for
// `columns` + kLanes values); returns how many: a vector compare, then the
// rare vectors with any such lane one value at a time (AVX-512 takes
// `AboveInSpans` instead).
template <typename T>
int64_t Above(const T* row, int64_t columns, float level, float* out) {
  int64_t count = 0, c = 0;
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
  for (; c < columns; ++c) {
    const float x = LoadOne(row[c]);
    if (!(x <= level)) out[count++] = x;  // or NaN, as kAboveOrNaN
  }
  return count;
}

#if defined(__AVX512F__)
// The groups of four vectors in a short row, at most.
constexpr int64_t kMostGroups = kLongFrom / (4 * kLanes);

// A row's first pass, from memory: its max (a NaN left out: x86's max
// returns its second operand where either is NaN), each whole span's
// lanewise max into `spans` (a span: kSpan groups), and whether the row holds
// a NaN. Each step fetches the bytes `ahead` past it (none where 0).
template <int64_t kSpan, typename T>
float MaxAndSpanMaxima(const T* row, int64_t columns, int64_t ahead, __m512* spans, bool& nan) {
  constexpr int64_t kWidth = 4 * kLanes * kSpan;
  __m512 top = _mm512_set1_ps(kMinusInf);
  __mmask16 unordered = 0;
  int64_t c = 0;
  for (int64_t s = 0; c + kWidth <= columns; c += kWidth, ++s) {
    __m512 span;
    for (int64_t g = 0; g < kSpan; ++g) {
      const int64_t at = c + 4 * kLanes * g;
      if (ahead)
        for (int64_t b = 0; b < 4 * kLanes * int64_t(sizeof(T)); b += 64)
          __builtin_prefetch(reinterpret_cast<const char*>(row + at) + ahead + b);
      __m512 x[4];
      LoadFour(row, at, x);
      span = g == 0 ? GroupMax(x) : _mm512_max_ps(GroupMax(x), span);
      unordered |= GroupNaN(x);
    }
    spans[s] = span;
    top = _mm512_max_ps(span, top);
  }
  for (; c < columns; c += kLanes) {
    // The last vector ends at the row's end (a max may see a value twice).
    const __m512 x = __m512(Load(row + std::min(c, columns - kLanes)));
    top = _mm512_max_ps(x, top);
    unordered |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  }
  nan = unordered != 0;
  return _mm512_reduce_max_ps(top);
}

// The logits above `bar` in row[c, columns), c a multiple of kLanes,
// appended to out[count...]: whole vectors, then the last one, which ends at
// the row's end, its lanes already seen left out.
template <typename T>
inline void AboveInTail(const T* row, int64_t columns, int64_t c, __m512 bar, float* out,
                        int64_t& count) {
  for (; c + kLanes <= columns; c += kLanes) {
    const __m512 x = __m512(Load(row + c));
    Keep(x, _mm512_cmp_ps_mask(x, bar, kAboveOrNaN), out, count);
  }
  if (c < columns) {
    const int64_t start = columns - kLanes;
    const __m512 x = __m512(Load(row + start));
    const __mmask16 fresh = __mmask16(0xFFFFu << (c - start));
    Keep(x, _mm512_mask_cmp_ps_mask(fresh, x, bar, kAboveOrNaN), out, count);
  }
}

// Calls visit(i) for each i < n whose maxima[i] passes `bar`: the compares
// first, 64 at a time, as bits, then the visits. A row's few candidates lie
// in a few groups at random places: a branch on each compare mispredicts
// (docs/measurement.md).
template <typename Visit>
inline void ForEachAbove(const __m512* maxima, int64_t n, __m512 bar, Visit&& visit) {
  for (int64_t first = 0; first < n; first += 64) {
    const int64_t count = std::min<int64_t>(64, n - first);
    uint64_t hot = 0;
    for (int64_t i = 0; i < count; ++i)
      hot |= uint64_t(_mm512_cmp_ps_mask(maxima[first + i], bar, kAboveOrNaN) != 0) << i;
    for (; hot; hot &= hot - 1) visit(first + __builtin_ctzll(hot));
  }
}

// The second pass: the logits above `level`, as `Above`, read again (from
// cache) only in the spans of `span` groups whose max (in `maxima`) passes
// it, and in the vectors past the whole spans.
template <typename T>
int64_t AboveInSpans(const T* row, int64_t columns, const __m512* maxima, int64_t span,
                     float level, float* out) {
  const __m512 bar = _mm512_set1_ps(level);
  const int64_t width = 4 * kLanes * span, whole = columns / width;
  int64_t count = 0;
  ForEachAbove(maxima, whole, bar, [&](int64_t i) {
    for (int64_t g = 0; g < span; ++g) {
      __m512 x[4];
      LoadFour(row, width * i + 4 * kLanes * g, x);
      KeepGroup(x, bar, out, count);
    }
  });
  AboveInTail(row, columns, whole * width, bar, out, count);
  return count;
}

// A long row's max and candidates in one pass: the groups whose max passes
// (the running max - 1) keep their logits above it, the level raised every
// 16 groups, the rest skipped on a branch (few take it, in a long row:
// predictable); then those above the final max - 1 kept. The bytes 8 KiB
// ahead are prefetched, as `AddBulk`'s. Whether the row holds a NaN comes
// out in `nan`. `out` has room for `columns` + kLanes values.
template <typename T>
float MaxAndCandidates(const T* row, int64_t columns, float* out, int64_t& taken, bool& nan) {
  __m512 top = _mm512_set1_ps(kMinusInf), bar = top;
  __mmask16 unordered = 0;
  int64_t count = 0, c = 0;
  for (int64_t step = 0; c + 4 * kLanes <= columns; c += 4 * kLanes, ++step) {
    for (int64_t b = 0; b < 4 * kLanes * int64_t(sizeof(T)); b += 64)
      __builtin_prefetch(reinterpret_cast<const char*>(row + c) + kPrefetchBytes + b);
    __m512 x[4];
    LoadFour(row, c, x);
    const __m512 most = GroupMax(x);
    top = _mm512_max_ps(most, top);
    unordered |= GroupNaN(x);
    if (_mm512_cmp_ps_mask(most, bar, kAboveOrNaN)) KeepGroup(x, bar, out, count);
    if (step % 16 == 0) bar = _mm512_set1_ps(Lowered(_mm512_reduce_max_ps(top) - 1.0f));
  }
  for (; c < columns; c += kLanes) {
    const int64_t start = std::min(c, columns - kLanes);
    const __m512 x = __m512(Load(row + start));
    top = _mm512_max_ps(x, top);
    unordered |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    Keep(x, _mm512_mask_cmp_ps_mask(__mmask16(0xFFFFu << (c - start)), x, bar, kAboveOrNaN),
         out, count);
  }
  nan = unordered != 0;
  const float m = _mm512_reduce_max_ps(top);
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

// Eight float64 lanes (GCC's and Clang's vector extensions).
typedef double Doubles __attribute__((vector_size(64)));
typedef int64_t Longs __attribute__((vector_size(64)));
typedef float Eight __attribute__((vector_size(32)));

// candidates[i, i + 8) as float64.
inline Doubles LoadEight(const float* candidates, int64_t i) {
  Eight x;
  std::memcpy(&x, candidates + i, sizeof x);
  return __builtin_convertvector(x, Doubles);
}

// Michelot's rounds on the candidates from t = m - 1, in float64: each
// round's compare and sums eight candidates at a time, in two accumulators.
// Rows whose logits lie close together (small logits, as at a model's
// initialization) have hundreds of candidates and take 4-8 rounds; one at a
// time, each round's sum waited on its previous addition (docs/measurement.md).
inline Solution Michelot(const float* candidates, int64_t taken, float top) {
  double t = double(top) - 1.0;
  int64_t size = -1;
  // Each round but the last leaves a candidate out: at most one round more
  // than there are candidates (a bound against rounding, never reached).
  for (int64_t round = 0; round <= taken; ++round) {
    const Doubles bar = Doubles{} + t;
    Doubles sum_a = Doubles{}, sum_b = Doubles{};
    Longs count_a = Longs{}, count_b = Longs{};  // minus the counts: a true compare is -1
    int64_t i = 0;
    for (; i + 16 <= taken; i += 16) {
      const Doubles a = LoadEight(candidates, i), b = LoadEight(candidates, i + 8);
      const Longs in_a = a > bar, in_b = b > bar;
      sum_a += in_a ? a : Doubles{};
      sum_b += in_b ? b : Doubles{};
      count_a += in_a;
      count_b += in_b;
    }
    if (i + 8 <= taken) {
      const Doubles a = LoadEight(candidates, i);
      const Longs in_a = a > bar;
      sum_a += in_a ? a : Doubles{};
      count_a += in_a;
      i += 8;
    }
    double sum = 0.0;
    int64_t count = 0;
    for (int k = 0; k < 8; ++k) {
      sum += sum_a[k] + sum_b[k];
      count -= count_a[k] + count_b[k];
    }
    for (; i < taken; ++i) {
      const bool in = candidates[i] > t;
      count += in;
      sum += in ? double(candidates[i]) : 0.0;
    }
    if (count == size) break;
    size = count;
    t = (sum - 1.0) / double(count);
  }
  const float threshold = float(t);
  const Doubles level = Doubles{} + double(threshold);
  Doubles squares = Doubles{};
  int64_t i = 0;
  for (; i + 8 <= taken; i += 8) {
    const Doubles excess = LoadEight(candidates, i) - level;
    squares += excess > 0.0 ? excess * excess : Doubles{};
  }
  double total = 0.0;
  for (int k = 0; k < 8; ++k) total += squares[k];
  for (; i < taken; ++i) {
    const double excess = std::max(double(candidates[i]) - double(threshold), 0.0);
    total += excess * excess;
  }
  return {threshold, float(size), float(total)};
}

#if defined(__AVX512F__)
// The same from at most kLanes candidates, with no rounds: sorted, with
// S_r the sum of the r largest, tau_r = (S_r - 1) / r rises with r while the
// r-th largest lies above tau_{r-1} (tau_r - tau_{r-1} = (z_(r) -
// tau_{r-1}) / r), that is while it is in the support, and falls after:
// tau is the largest tau_r. Each lane's rank r (counting ties: the values
// >= its own) and S_r come from all lanes at once, a compare and two masked
// adds for each lane in turn, broadcast from the register (the rounds wait
// on one another, a division each: docs/measurement.md; a loop as long as
// the candidates mispredicts its end); then one division for all lanes and
// one max. The sums are float32, relative to m, of values in [-1, 0]; the
// lanes past the candidates are -inf and never count. Only the first
// kBroadcasts lanes are broadcast: the candidates are at most that many.
template <int kBroadcasts>
inline Solution FewCandidates(const float* candidates, int64_t taken, float top) {
  const __mmask16 valid = __mmask16((1u << taken) - 1);
  const __m512 raw = _mm512_maskz_loadu_ps(valid, candidates);
  const __m512 shifted =
      _mm512_mask_sub_ps(_mm512_set1_ps(kMinusInf), valid, raw, _mm512_set1_ps(top));
  __m512i rank = _mm512_setzero_si512();
  __m512 sum = _mm512_setzero_ps();
  const __m512i one = _mm512_set1_epi32(1);
  for (int j = 0; j < kBroadcasts; ++j) {
    const __m512 value = _mm512_permutexvar_ps(_mm512_set1_epi32(int32_t(j)), shifted);
    const __mmask16 counted = _mm512_cmp_ps_mask(value, shifted, _CMP_GE_OQ);
    rank = _mm512_mask_add_epi32(rank, counted, rank, one);
    sum = _mm512_mask_add_ps(sum, counted, sum, value);
  }
  const __m512 each = _mm512_maskz_div_ps(valid, _mm512_sub_ps(sum, _mm512_set1_ps(1.0f)),
                                          _mm512_cvtepi32_ps(rank));
  const float threshold = top + _mm512_mask_reduce_max_ps(valid, each);
  const __m512 level = _mm512_set1_ps(threshold);
  const __mmask16 support = _mm512_mask_cmp_ps_mask(valid, raw, level, _CMP_GT_OQ);
  const __m512 excess = _mm512_maskz_sub_ps(support, raw, level);
  return {threshold, float(_mm_popcnt_u32(_cvtmask16_u32(support))),
          _mm512_reduce_add_ps(_mm512_mul_ps(excess, excess))};
}
#endif

template <typename T>
void Rows(const T* logits, const int32_t* labels, float* tau, float* support, float* squares,
          float* true_logit, int64_t first, int64_t last, int64_t columns) {
  // Two rooms for candidates: a row's wait for their search in one while
  // the next row's passes fill the other (`Waiting`).
  std::unique_ptr<float[]> room(new float[2 * (columns + kLanes)]);
  float* const rooms[2] = {room.get(), room.get() + columns + kLanes};
#if defined(__AVX512F__)
  __m512 groups[kMostGroups];
  const bool long_row = columns >= kLongFrom;
  std::unique_ptr<__m512[]> spans(
      new __m512[long_row && sizeof(T) == 2 ? columns / (4 * kLanes * kLongSpan) : 0]);
  // A long row fetches the bytes 8 KiB ahead, as `AddBulk`; a short float32
  // row the next row's same bytes, so that its reads overlap this row's search.
  const int64_t step_ahead = long_row ? kPrefetchBytes : sizeof(T) == 4 ? columns * 4 : 0;
#endif
  // A row's search waits until the next row's passes are done: its
  // candidates were stored a few at a time, overlapping, and a load of them
  // all right after waits for those stores to reach the cache; the next
  // row's loads run meanwhile (docs/measurement.md).
  struct Waiting {
    int64_t row = -1, taken = 0;
    float top = 0.0f;
    const float* candidates = nullptr;
  } waiting;
  const auto search = [&](const Waiting& w) {
#if defined(__AVX512F__)
    const Solution s = w.taken <= 8 ? FewCandidates<8>(w.candidates, w.taken, w.top)
                     : w.taken <= kLanes ? FewCandidates<kLanes>(w.candidates, w.taken, w.top)
                                         : Michelot(w.candidates, w.taken, w.top);
#else
    const Solution s = Michelot(w.candidates, w.taken, w.top);
#endif
    tau[w.row] = s.tau;
    support[w.row] = s.size;
    squares[w.row] = s.squares;
  };
  const int64_t ahead = std::min<int64_t>(columns * sizeof(T), kPrefetchRowBytes);
  for (int64_t r = first; r < last; ++r) {
    const T* row = logits + r * columns;
    float* const candidates = waiting.candidates == rooms[0] ? rooms[1] : rooms[0];
    // The row after next's first bytes fetched while this one is searched.
    const char* next = reinterpret_cast<const char*>(row + 2 * columns);
    for (int64_t b = 0; b < ahead; b += 64) __builtin_prefetch(next + b);
    if (labels) {
      const int64_t label = labels[r];
      true_logit[r] = label < 0 || label >= columns ? kNaN : LoadOne(row[label]);
    }
    float top;
    int64_t taken = 0;
    bool nan = false;
#if defined(__AVX512F__)
    if (long_row && sizeof(T) == 4) {
      top = MaxAndCandidates(row, columns, candidates, taken, nan);
    } else if (columns >= kLanes) {
      top = long_row ? MaxAndSpanMaxima<kLongSpan>(row, columns, step_ahead, spans.get(), nan)
                     : MaxAndSpanMaxima<1>(row, columns, step_ahead, groups, nan);
      if (std::isfinite(top) && !nan)
        taken = AboveInSpans(row, columns, long_row ? spans.get() : groups,
                             long_row ? kLongSpan : 1, Lowered(top - 1.0f), candidates);
    } else
#endif
    {
      top = RowMax(row, columns);
      if (std::isfinite(top)) taken = Above(row, columns, Lowered(top - 1.0f), candidates);
    }
    // RowMax is NaN for a row with a NaN; the AVX-512 passes say so in `nan`.
    if (!std::isfinite(top) || nan) {
      tau[r] = support[r] = squares[r] = kNaN;
      continue;
    }
    if (waiting.row >= 0) search(waiting);
    waiting = {r, taken, top, candidates};
  }
  if (waiting.row >= 0) search(waiting);
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
