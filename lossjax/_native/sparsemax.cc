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
// second from cache (for rows under kLongFrom classes, from the first pass's
// maxima of cells of four logits, woven into the next row's first pass), or
// in one for long float32 rows; then tau from the candidates alone: by their
// ranks where at most 16 (AVX-512; 16 rows at once where at most 8), else by
// Michelot's rounds in float64. A row with a NaN gives NaN for all three, as
// does a row whose max is infinite (there relu(z - tau) is inf - inf).

#include <cstdlib>
#include <new>

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

// A row's candidates come from two passes, the second from cache: in rows
// shorter than this, through the first pass's cells (`FirstPass`); in
// longer bfloat16 rows, through the first's maxima of spans of kLongSpan
// groups (`MaxAndSpanMaxima`, `AboveInSpans`); longer float32 rows take one
// pass (`MaxAndCandidates`). A bfloat16 row's pass from cache runs at the
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

// The vectors of row[c, columns), c a multiple of kLanes, into a running
// max and its NaN lanes: the last ends at the row's end (a max may see a
// value twice).
template <typename T>
inline void MaxOfTail(const T* row, int64_t columns, int64_t c, __m512& top,
                      __mmask16& unordered) {
  for (; c < columns; c += kLanes) {
    const __m512 x = __m512(Load(row + std::min(c, columns - kLanes)));
    top = _mm512_max_ps(x, top);
    unordered |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  }
}

// A long bfloat16 row's first pass, from memory: its max (a NaN left out:
// x86's max returns its second operand where either is NaN), each whole
// span's lanewise max into `spans` (a span: kLongSpan groups), and whether the
// row holds a NaN. Each step fetches the bytes 8 KiB past it, as `AddBulk`.
inline float MaxAndSpanMaxima(const uint16_t* row, int64_t columns, __m512* spans, bool& nan) {
  constexpr int64_t kWidth = 4 * kLanes * kLongSpan;
  __m512 top = _mm512_set1_ps(kMinusInf);
  __mmask16 unordered = 0;
  int64_t c = 0;
  for (int64_t s = 0; c + kWidth <= columns; c += kWidth, ++s) {
    __m512 span;
    for (int64_t g = 0; g < kLongSpan; ++g) {
      const int64_t at = c + 4 * kLanes * g;
      FetchAhead(row + at, 4 * kLanes * 2);
      __m512 x[4];
      LoadFour(row, at, x);
      span = g == 0 ? GroupMax(x) : _mm512_max_ps(GroupMax(x), span);
      unordered |= GroupNaN(x);
    }
    spans[s] = span;
    top = _mm512_max_ps(span, top);
  }
  MaxOfTail(row, columns, c, top, unordered);
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

// A short row's first pass, from memory: its lanewise max (returned),
// whether it holds a NaN, and its cells. A cell is a lane of a group: four
// logits (a lane of each of `LoadFour`'s vectors). Each cell's max goes to
// `mine`, and each lane's largest second largest of a cell to `second`:
// where `second` is at or below a level, no cell holds two logits above it,
// and the logits above it are the cells' maxima above it. The previous row's
// second pass is woven in: its cells (`theirs`) above `bar` are appended to
// out[kept...], a compare and a compress a group. In a pass of its own, the
// second waited on its row's level, and the next row's loads on it
// (docs/measurement.md). Each step fetches the bytes 8 KiB past it, as
// `AddBulk` (the rows after: rows are contiguous).
template <typename T>
__m512 FirstPass(const T* row, int64_t columns, __m512* mine, __m512& second, bool& nan,
                 const __m512* theirs, __m512 bar, float* out, int64_t& kept) {
  __m512 top = _mm512_set1_ps(kMinusInf), runner_up = top;
  __mmask16 unordered = 0;
  int64_t c = 0;
  for (int64_t g = 0; c + 4 * kLanes <= columns; c += 4 * kLanes, ++g) {
    FetchAhead(row + c, 4 * kLanes * sizeof(T));
    __m512 x[4];
    LoadFour(row, c, x);
    const __m512 high_a = _mm512_max_ps(x[0], x[1]), low_a = _mm512_min_ps(x[0], x[1]);
    const __m512 high_b = _mm512_max_ps(x[2], x[3]), low_b = _mm512_min_ps(x[2], x[3]);
    const __m512 most = _mm512_max_ps(high_a, high_b);
    mine[g] = most;
    runner_up = _mm512_max_ps(runner_up, _mm512_max_ps(_mm512_min_ps(high_a, high_b),
                                                       _mm512_max_ps(low_a, low_b)));
    top = _mm512_max_ps(most, top);
    unordered |= GroupNaN(x);
    Keep(theirs[g], _mm512_cmp_ps_mask(theirs[g], bar, kAboveOrNaN), out, kept);
  }
  MaxOfTail(row, columns, c, top, unordered);
  second = runner_up;
  nan = unordered != 0;
  return top;
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
    FetchAhead(row + c, 4 * kLanes * sizeof(T));
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
// ||p||^2 from the squares of the support's excesses in lanes 0-15, in the
// order that `Batch` follows for lanes 0-7 (the others 0): lane k with
// k + 8, then k + 4, k + 2, k + 1.
inline float SumOfLanes(__m512 squares) {
  const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(squares),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(squares), 1)));
  const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
  return _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)));
}

// excess * excess rounded on its own: GCC would fuse a product into the sum
// that follows it (-ffp-contract=fast), and then `Batch`'s sums and
// `FewCandidates`' would round apart.
inline __m512 Square(__m512 excess) {
  return _mm512_mul_round_ps(excess, excess, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

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
// lanes past the candidates are -inf and never count.
inline Solution FewCandidates(const float* candidates, int64_t taken, float top) {
  const __mmask16 valid = __mmask16((1u << taken) - 1);
  const __m512 raw = _mm512_maskz_loadu_ps(valid, candidates);
  const __m512 shifted =
      _mm512_mask_sub_ps(_mm512_set1_ps(kMinusInf), valid, raw, _mm512_set1_ps(top));
  __m512i rank = _mm512_setzero_si512();
  __m512 sum = _mm512_setzero_ps();
  const __m512i one = _mm512_set1_epi32(1);
  for (int j = 0; j < kLanes; ++j) {
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
  return {threshold, float(_mm_popcnt_u32(_cvtmask16_u32(support))),
          SumOfLanes(Square(_mm512_maskz_sub_ps(support, raw, level)))};
}

// Rows of at most kBatched candidates, searched kLanes at a time, a row in
// each lane: `FewCandidates`' arithmetic, operation for operation (its
// broadcasts past the candidates count nothing), so that a row's numbers do
// not depend on its neighbours. One row at a time, the search's chain of
// dependent steps (broadcast, compare, masked sums, division, max, the
// squares' sum) ran longer than its instructions' share (docs/measurement.md).
constexpr int kBatched = 8;

class Batch {
 public:
  Batch(float* tau, float* support, float* squares) : tau_(tau), support_(support), squares_(squares) {}

  // A row's candidates, `taken` <= kBatched of them at `candidates`; solved
  // once kLanes rows are in.
  void Add(const float* candidates, int64_t taken, float top, int64_t row) {
    _mm512_store_ps(rows_of_candidates_ + kLanes * count_,
                    _mm512_mask_loadu_ps(_mm512_set1_ps(kMinusInf),
                                         __mmask16((1u << taken) - 1), candidates));
    tops_[count_] = top;
    rows_[count_] = row;
    if (++count_ == kLanes) Solve();
  }

  // The rows in (the lanes past them: no candidates, and their results unused).
  void Solve() {
    if (count_ == 0) return;
    for (int i = count_; i < kLanes; ++i) {
      _mm512_store_ps(rows_of_candidates_ + kLanes * i, _mm512_set1_ps(kMinusInf));
      tops_[i] = 0.0f;
    }
    const __m512 top = _mm512_load_ps(tops_);
    __m512 raw[kBatched], shifted[kBatched];
    __mmask16 valid[kBatched];
    Transpose(raw);
    for (int j = 0; j < kBatched; ++j) {
      valid[j] = _mm512_cmp_ps_mask(raw[j], _mm512_set1_ps(kMinusInf), _CMP_NEQ_OQ);
      shifted[j] = _mm512_mask_sub_ps(_mm512_set1_ps(kMinusInf), valid[j], raw[j], top);
    }
    __m512 best = _mm512_set1_ps(kMinusInf);
    for (int i = 0; i < kBatched; ++i) {
      __m512i rank = _mm512_setzero_si512();
      __m512 sum = _mm512_setzero_ps();
      for (int j = 0; j < kBatched; ++j) {
        const __mmask16 counted = _mm512_cmp_ps_mask(shifted[j], shifted[i], _CMP_GE_OQ);
        rank = _mm512_mask_add_epi32(rank, counted, rank, _mm512_set1_epi32(1));
        sum = _mm512_mask_add_ps(sum, counted, sum, shifted[j]);
      }
      const __m512 each =
          _mm512_mask_div_ps(_mm512_set1_ps(kMinusInf), valid[i],
                             _mm512_sub_ps(sum, _mm512_set1_ps(1.0f)), _mm512_cvtepi32_ps(rank));
      best = _mm512_max_ps(each, best);
    }
    const __m512 level = _mm512_add_ps(top, best);
    __m512i size = _mm512_setzero_si512();
    __m512 square[kBatched];
    for (int i = 0; i < kBatched; ++i) {
      const __mmask16 in = _mm512_mask_cmp_ps_mask(valid[i], raw[i], level, _CMP_GT_OQ);
      size = _mm512_mask_add_epi32(size, in, size, _mm512_set1_epi32(1));
      square[i] = Square(_mm512_maskz_sub_ps(in, raw[i], level));
    }
    // `SumOfLanes`' order: ((x0 + x4) + (x2 + x6)) + ((x1 + x5) + (x3 + x7)).
    const __m512 total = _mm512_add_ps(
        _mm512_add_ps(_mm512_add_ps(square[0], square[4]), _mm512_add_ps(square[2], square[6])),
        _mm512_add_ps(_mm512_add_ps(square[1], square[5]), _mm512_add_ps(square[3], square[7])));
    alignas(64) float out_tau[kLanes], out_size[kLanes], out_squares[kLanes];
    _mm512_store_ps(out_tau, level);
    _mm512_store_ps(out_size, _mm512_cvtepi32_ps(size));
    _mm512_store_ps(out_squares, total);
    for (int i = 0; i < count_; ++i) {
      tau_[rows_[i]] = out_tau[i];
      support_[rows_[i]] = out_size[i];
      squares_[rows_[i]] = out_squares[i];
    }
    count_ = 0;
  }

 private:
  static_assert(kBatched == 8, "Transpose and the squares' sum take 8 candidates a row");

  // The rows' first 8 lanes, transposed: column[j] holds each row's lane j,
  // row i in lane i. An 8x8 transpose in each half of the vectors (rows 0-3
  // and 8-11 in the low halves, 4-7 and 12-15 in the high), whose quarters
  // then meet in order.
  void Transpose(__m512 (&column)[kBatched]) const {
    __m512 z[8], t[8], u[8];
    for (int r = 0; r < 8; ++r) {
      const int low = r < 4 ? r : r + 4;
      const __m256 high = _mm256_load_ps(rows_of_candidates_ + kLanes * (low + 4));
      z[r] = _mm512_castpd_ps(_mm512_insertf64x4(
          _mm512_castps_pd(_mm512_castps256_ps512(_mm256_load_ps(rows_of_candidates_ + kLanes * low))),
          _mm256_castps_pd(high), 1));
    }
    for (int k = 0; k < 4; ++k) {
      t[2 * k] = _mm512_unpacklo_ps(z[2 * k], z[2 * k + 1]);
      t[2 * k + 1] = _mm512_unpackhi_ps(z[2 * k], z[2 * k + 1]);
    }
    for (int k = 0; k < 2; ++k) {
      u[4 * k] = _mm512_shuffle_ps(t[4 * k], t[4 * k + 2], 0x44);
      u[4 * k + 1] = _mm512_shuffle_ps(t[4 * k], t[4 * k + 2], 0xEE);
      u[4 * k + 2] = _mm512_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0x44);
      u[4 * k + 3] = _mm512_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0xEE);
    }
    for (int j = 0; j < 4; ++j) {
      column[j] = _mm512_shuffle_f32x4(u[j], u[j + 4], 0x88);
      column[j + 4] = _mm512_shuffle_f32x4(u[j], u[j + 4], 0xDD);
    }
  }

  alignas(64) float rows_of_candidates_[kLanes * kLanes];  // a row's at kLanes * i
  alignas(64) float tops_[kLanes];
  int64_t rows_[kLanes];
  int count_ = 0;
  float* tau_;
  float* support_;
  float* squares_;
};
#endif

// Rooms for rows' candidates (each `columns` + kLanes values), each from a
// page's start: where a room's first bytes straddled two pages, the
// candidates' stores and their search's load each split in two and the whole
// call slowed (docs/measurement.md), and where a room began depended on the
// heap.
class Rooms {
 public:
  Rooms(int64_t columns, int count)
      : bytes_((int64_t(sizeof(float)) * (columns + kLanes) + 4095) / 4096 * 4096),
        block_(static_cast<char*>(std::aligned_alloc(4096, count * bytes_)), &std::free) {
    if (!block_) throw std::bad_alloc();
  }
  float* operator[](int64_t i) const { return reinterpret_cast<float*>(block_.get() + i * bytes_); }
  // Of two rooms, the one that is not `taken`.
  float* Besides(const float* taken) const { return taken == (*this)[0] ? (*this)[1] : (*this)[0]; }

 private:
  int64_t bytes_;
  std::unique_ptr<char, decltype(&std::free)> block_;
};

// A row's search waits until the next row's passes are done: its candidates
// were stored a few at a time, overlapping, and a load of them all right
// after waits for those stores to reach the cache; the next row's loads run
// meanwhile (docs/measurement.md).
class Searches {
 public:
  Searches(float* tau, float* support, float* squares)
      : tau_(tau), support_(support), squares_(squares)
#if defined(__AVX512F__)
        , batch_(tau, support, squares)
#endif
  {}

  // Searches the row handed in before, and keeps this one waiting.
  void Hand(int64_t row, int64_t taken, float top, const float* candidates) {
    Search();
    waiting_ = {row, taken, top, candidates};
  }
  const float* waiting_room() const { return waiting_.candidates; }

  void Finish() {
    Search();
#if defined(__AVX512F__)
    batch_.Solve();
#endif
  }

 private:
  void Search() {
    const Waiting w = waiting_;
    if (w.row < 0) return;
    waiting_.row = -1;
#if defined(__AVX512F__)
    if (w.taken <= kBatched) return batch_.Add(w.candidates, w.taken, w.top, w.row);
    const Solution s = w.taken <= kLanes ? FewCandidates(w.candidates, w.taken, w.top)
                                         : Michelot(w.candidates, w.taken, w.top);
#else
    const Solution s = Michelot(w.candidates, w.taken, w.top);
#endif
    tau_[w.row] = s.tau;
    support_[w.row] = s.size;
    squares_[w.row] = s.squares;
  }

  struct Waiting {
    int64_t row = -1, taken = 0;
    float top = 0.0f;
    const float* candidates = nullptr;
  } waiting_;
  float* tau_;
  float* support_;
  float* squares_;
#if defined(__AVX512F__)
  Batch batch_;
#endif
};

// The row after next's first bytes fetched while this one is searched.
template <typename T>
inline void FetchRowAfterNext(const T* row, int64_t columns) {
  const int64_t ahead = std::min<int64_t>(columns * sizeof(T), kPrefetchRowBytes);
  const char* next = reinterpret_cast<const char*>(row + 2 * columns);
  for (int64_t b = 0; b < ahead; b += 64) __builtin_prefetch(next + b);
}

#if defined(__AVX512F__)
// Rows of kLanes to kLongFrom classes, in a pipeline: row r's first pass
// (`FirstPass`) holds row r - 1's second, and row r - 2's search follows
// (`Searches`).
template <typename T>
void ShortRows(const T* logits, const int32_t* labels, float* tau, float* support, float* squares,
               float* true_logit, int64_t first, int64_t last, int64_t columns) {
  // Two rooms: the row before's candidates go to one while the other's wait
  // for their search.
  const Rooms rooms(columns, 2);
  Searches searches(tau, support, squares);
  const int64_t whole = columns / (4 * kLanes);
  // Two rows' cells. A first pass with no second beside it (a chunk's first
  // row, or one after a row with a NaN) compares the other row's with a bar
  // of +inf: zeros before any row's; a NaN row's NaNs pass it, into the free
  // room, unused.
  __m512 cells[2][kMostGroups] = {};
  // The row whose second pass is due, and its level, as a float and in every lane.
  struct Due {
    int64_t row = -1;
    const T* logits = nullptr;
    float top = 0.0f, level = 0.0f;
    __m512 bar = _mm512_set1_ps(std::numeric_limits<float>::infinity()), second;
  } due;
  // The due row's candidates: the cells' maxima, or its logits read again
  // where a cell holds two above the level; then the row waits for its search.
  const auto finish = [&](const __m512* cells_of_due, float* out, int64_t kept) {
    if (_mm512_cmp_ps_mask(due.second, due.bar, kAboveOrNaN))
      kept = AboveInSpans(due.logits, columns, cells_of_due, 1, due.level, out);
    else
      AboveInTail(due.logits, columns, whole * 4 * kLanes, due.bar, out, kept);
    searches.Hand(due.row, kept, due.top, out);
    due = Due{};
  };
  for (int64_t r = first; r < last; ++r) {
    // (No row fetched ahead whole, as the longer rows' loop does: `FirstPass`'
    // fetches 8 KiB ahead cover it, and the two together measured slower.)
    const T* row = logits + r * columns;
    if (labels) true_logit[r] = LabelLogit(row, labels[r], columns);
    const __m512* const theirs = cells[(r & 1) ^ 1];
    float* const out = rooms.Besides(searches.waiting_room());
    int64_t kept = 0;
    __m512 second;
    bool nan;
    const float m = _mm512_reduce_max_ps(
        FirstPass(row, columns, cells[r & 1], second, nan, theirs, due.bar, out, kept));
    if (due.row >= 0) finish(theirs, out, kept);
    if (!std::isfinite(m) || nan) {
      tau[r] = support[r] = squares[r] = kNaN;
      continue;
    }
    const float level = Lowered(m - 1.0f);
    due = {r, row, m, level, _mm512_set1_ps(level), second};
  }
  if (due.row >= 0) {
    // The last row's second pass, alone.
    const __m512* const mine = cells[due.row & 1];
    float* const out = rooms.Besides(searches.waiting_room());
    int64_t kept = 0;
    for (int64_t g = 0; g < whole; ++g)
      Keep(mine[g], _mm512_cmp_ps_mask(mine[g], due.bar, kAboveOrNaN), out, kept);
    finish(mine, out, kept);
  }
  searches.Finish();
}
#endif

template <typename T>
void Rows(const T* logits, const int32_t* labels, float* tau, float* support, float* squares,
          float* true_logit, int64_t first, int64_t last, int64_t columns) {
#if defined(__AVX512F__)
  if (columns >= kLanes && columns < kLongFrom)
    return ShortRows(logits, labels, tau, support, squares, true_logit, first, last, columns);
  const bool long_row = columns >= kLongFrom;
  std::unique_ptr<__m512[]> spans(
      new __m512[long_row && sizeof(T) == 2 ? columns / (4 * kLanes * kLongSpan) : 0]);
#endif
  // Two rooms: a row's candidates wait for their search in one while the
  // next row's passes fill the other.
  const Rooms rooms(columns, 2);
  Searches searches(tau, support, squares);
  for (int64_t r = first; r < last; ++r) {
    const T* row = logits + r * columns;
    float* const candidates = rooms.Besides(searches.waiting_room());
    FetchRowAfterNext(row, columns);
    if (labels) true_logit[r] = LabelLogit(row, labels[r], columns);
    float top;
    int64_t taken = 0;
    bool nan = false;
#if defined(__AVX512F__)
    if (long_row) {
      if constexpr (sizeof(T) == 4) {
        top = MaxAndCandidates(row, columns, candidates, taken, nan);
      } else {
        top = MaxAndSpanMaxima(row, columns, spans.get(), nan);
        if (std::isfinite(top) && !nan)
          taken = AboveInSpans(row, columns, spans.get(), kLongSpan, Lowered(top - 1.0f),
                               candidates);
      }
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
    searches.Hand(r, taken, top, candidates);
  }
  searches.Finish();
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
