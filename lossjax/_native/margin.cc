// The margin losses' two row statistics in one pass over the logits: the
// largest logit of the classes other than the label's (the rival) and the
// label's own logit. XLA:CPU cannot leave one class out of its library
// kernel's max (docs/measurement.md), so lossjax's own XLA form reads the
// logits about three times; this kernel reads each once.
//
// XLA FFI handlers (lossjax/_native/__init__.py builds and registers them):
//   logits [..., C] float32 or bfloat16, labels [...] int32
//   -> rival [...] float32, true_logit [...] float32 (and, for the
//      derivative, the count of the other classes at the rival)
// The rival is NaN where any class other than the label's is NaN, -inf where
// C = 1; both are NaN where a label lies outside [0, C). A bfloat16 value is
// exactly a float32 with its low 16 bits zero, so both outputs are exact.

#include "rows.h"

namespace lossjax {
namespace {

// Rows narrower than a vector, one value at a time.
template <typename T>
float NarrowRival(const T* row, int64_t columns, int64_t label) {
  float best = kMinusInf;
  for (int64_t c = 0; c < columns; ++c) {
    if (c == label) continue;
    const float x = LoadOne(row[c]);
    if (x != x) return kNaN;
    best = x > best ? x : best;
  }
  return best;
}

// How many of row[begin, end) equal `level`, for rows of at least kLanes
// logits: whole vectors, then one masked to the rest (a count, unlike a max,
// must not see a value twice).
template <typename T>
int64_t CountRange(const T* row, int64_t columns, int64_t begin, int64_t end, float level) {
  const Floats bar = Floats{} + level;
  Ints count = Ints{};
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) count -= Load(row + i) == bar;  // true is -1
  if (i < end) {
    const int64_t start = std::min(i, columns - kLanes);
    count -= (Load(row + start) == bar) & LanesIn(start, i, end);
  }
  int64_t total = 0;
  for (int k = 0; k < kLanes; ++k) total += count[k];
  return total;
}

// The classes other than the label's at the rival (the derivative's ties):
// NaN with the rival, 0 where it is -inf (no derivative).
template <typename T>
float Ties(const T* row, int64_t columns, int64_t label, float rival) {
  if (rival != rival) return kNaN;
  if (rival == kMinusInf) return 0.0f;
  if (columns < kLanes) {
    int64_t count = 0;
    for (int64_t c = 0; c < columns; ++c) count += c != label && LoadOne(row[c]) == rival;
    return float(count);
  }
  return float(CountRange(row, columns, 0, label, rival) +
               CountRange(row, columns, label + 1, columns, rival));
}

// The rival and true logit of rows [first, last), and with `ties` (null or
// not) the count of the classes at the rival, from the row in cache.
template <typename T>
void Rows(const T* logits, const int32_t* labels, float* rival, float* true_logit, float* ties,
          int64_t first, int64_t last, int64_t columns) {
  for (int64_t r = first; r < last; ++r) {
    const T* row = logits + r * columns;
    const int64_t label = labels[r];
    if (label < 0 || label >= columns) {
      rival[r] = true_logit[r] = kNaN;
      if (ties) ties[r] = kNaN;
      continue;
    }
    true_logit[r] = LoadOne(row[label]);
    if (columns < kLanes) {
      rival[r] = NarrowRival(row, columns, label);
    } else {
      RunningMax acc;
      AddRange(row, columns, 0, label, acc);
      AddRange(row, columns, label + 1, columns, acc);
      rival[r] = acc.Value();
    }
    if (ties) ties[r] = Ties(row, columns, label, rival[r]);
  }
}

// The handlers' shared body; `ties` null where the count is not asked for.
ffi::Error Margins(ffi::ThreadPool& pool, const ffi::AnyBuffer& logits,
                   const ffi::Buffer<ffi::S32>& labels, float* rival, float* true_logit,
                   float* ties) {
  int64_t rows, columns;
  if (auto error = RowsAndColumns(logits, labels.element_count(), rows, columns); error.failure())
    return error;
  const int32_t* y = labels.typed_data();
  return WithLogits(logits, [&](auto z) {
    ForRowChunks(pool, rows, columns, [=](int64_t first, int64_t last) {
      Rows(z, y, rival, true_logit, ties, first, last, columns);
    });
  });
}

ffi::Error RivalAndTrueLogit(ffi::ThreadPool pool, ffi::AnyBuffer logits,
                             ffi::Buffer<ffi::S32> labels, ffi::ResultBuffer<ffi::F32> rival,
                             ffi::ResultBuffer<ffi::F32> true_logit) {
  return Margins(pool, logits, labels, rival->typed_data(), true_logit->typed_data(), nullptr);
}

// The same and the ties, for the derivative (a count of its own over the
// logits in XLA's form).
ffi::Error RivalTrueLogitAndTies(ffi::ThreadPool pool, ffi::AnyBuffer logits,
                                 ffi::Buffer<ffi::S32> labels, ffi::ResultBuffer<ffi::F32> rival,
                                 ffi::ResultBuffer<ffi::F32> true_logit,
                                 ffi::ResultBuffer<ffi::F32> ties) {
  return Margins(pool, logits, labels, rival->typed_data(), true_logit->typed_data(),
                 ties->typed_data());
}

}  // namespace
}  // namespace lossjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(LossjaxRivalAndTrueLogit, lossjax::RivalAndTrueLogit,
                              LOSSJAX_BIND_LOGITS LOSSJAX_LABELS
                                  LOSSJAX_F32_RESULT LOSSJAX_F32_RESULT);

XLA_FFI_DEFINE_HANDLER_SYMBOL(LossjaxRivalTrueLogitAndTies, lossjax::RivalTrueLogitAndTies,
                              LOSSJAX_BIND_LOGITS LOSSJAX_LABELS
                                  LOSSJAX_F32_RESULT LOSSJAX_F32_RESULT LOSSJAX_F32_RESULT);
