// Logit MSE's row statistics in one pass over the logits: the label's logit
// and sum_c z_c^2. XLA:CPU takes the label's logit by a gather, a loop of
// its own before the row sums, whose loads wait on memory a row at a time
// (docs/measurement.md).
//
// An XLA FFI handler (lossjax/_native/__init__.py builds and registers it):
//   logits [..., C] float32 or bfloat16, labels [...] int32
//   -> true_logit [...], squares [...] float32 each
// A NaN in a row makes its sum NaN, an infinity inf; a label outside [0, C)
// gives a NaN true logit.

#include "rows.h"

namespace lossjax {
namespace {

// sum_c row[c]^2: four accumulators, the bytes 8 KiB ahead prefetched (as
// `AddBulk`), whole vectors, then one masked to the rest; rows narrower than
// a vector one value at a time.
template <typename T>
float SumOfSquares(const T* row, int64_t columns) {
  if (columns < kLanes) {
    float sum = 0.0f;
    for (int64_t c = 0; c < columns; ++c) sum += LoadOne(row[c]) * LoadOne(row[c]);
    return sum;
  }
  Floats sums[4] = {};
  int64_t i = 0;
  for (; i + 4 * kLanes <= columns; i += 4 * kLanes) {
    FetchAhead(row + i, 4 * kLanes * sizeof(T));
    for (int k = 0; k < 4; ++k) {
      const Floats x = Load(row + i + k * kLanes);
      sums[k] += x * x;
    }
  }
  for (; i + kLanes <= columns; i += kLanes) {
    const Floats x = Load(row + i);
    sums[0] += x * x;
  }
  if (i < columns) {
    const int64_t start = columns - kLanes;
    const Floats x = LanesIn(start, i, columns) ? Load(row + start) : Floats{};
    sums[1] += x * x;
  }
  const Floats total = (sums[0] + sums[1]) + (sums[2] + sums[3]);
  float sum = 0.0f;
  for (int k = 0; k < kLanes; ++k) sum += total[k];
  return sum;
}

ffi::Error TrueLogitAndSquares(ffi::ThreadPool pool, ffi::AnyBuffer logits,
                               ffi::Buffer<ffi::S32> labels, ffi::ResultBuffer<ffi::F32> true_logit,
                               ffi::ResultBuffer<ffi::F32> squares) {
  int64_t rows, columns;
  if (auto error = RowsAndColumns(logits, labels.element_count(), rows, columns); error.failure())
    return error;
  const int32_t* y = labels.typed_data();
  float* picked = true_logit->typed_data();
  float* sums = squares->typed_data();
  return WithLogits(logits, [&](auto z) {
    ForRowChunks(pool, rows, columns, [=](int64_t first, int64_t last) {
      for (int64_t r = first; r < last; ++r) {
        const auto* row = z + r * columns;
        picked[r] = LabelLogit(row, y[r], columns);
        sums[r] = SumOfSquares(row, columns);
      }
    });
  });
}

}  // namespace
}  // namespace lossjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(LossjaxTrueLogitAndSquares, lossjax::TrueLogitAndSquares,
                              LOSSJAX_BIND_LOGITS LOSSJAX_LABELS
                                  LOSSJAX_F32_RESULT LOSSJAX_F32_RESULT);
