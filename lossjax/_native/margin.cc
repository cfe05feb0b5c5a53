// The margin losses' two row statistics in one pass over the logits: the
// largest logit of the classes other than the label's (the rival) and the
// label's own logit. XLA:CPU cannot leave one class out of its library
// kernel's max (docs/measurement.md), so lossjax's own XLA form reads the
// logits about three times; this kernel reads each once.
//
// An XLA FFI handler (lossjax/_native/__init__.py builds and registers it):
//   logits [..., C] float32 or bfloat16, labels [...] int32
//   -> rival [...] float32, true_logit [...] float32
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

template <typename T>
void Rows(const T* logits, const int32_t* labels, float* rival, float* true_logit,
          int64_t first, int64_t last, int64_t columns) {
  for (int64_t r = first; r < last; ++r) {
    const T* row = logits + r * columns;
    const int64_t label = labels[r];
    if (label < 0 || label >= columns) {
      rival[r] = true_logit[r] = kNaN;
      continue;
    }
    true_logit[r] = LoadOne(row[label]);
    if (columns < kLanes) {
      rival[r] = NarrowRival(row, columns, label);
      continue;
    }
    RunningMax acc;
    AddRange(row, columns, 0, label, acc);
    AddRange(row, columns, label + 1, columns, acc);
    rival[r] = acc.Value();
  }
}

ffi::Error RivalAndTrueLogit(ffi::ThreadPool pool, ffi::AnyBuffer logits,
                             ffi::Buffer<ffi::S32> labels, ffi::ResultBuffer<ffi::F32> rival,
                             ffi::ResultBuffer<ffi::F32> true_logit) {
  int64_t rows, columns;
  if (auto error = RowsAndColumns(logits, labels.element_count(), rows, columns); error.failure())
    return error;
  const int32_t* y = labels.typed_data();
  float* r = rival->typed_data();
  float* t = true_logit->typed_data();
  return WithLogits(logits, [&](auto z) {
    ForRowChunks(pool, rows, columns, [=](int64_t first, int64_t last) {
      Rows(z, y, r, t, first, last, columns);
    });
  });
}

}  // namespace
}  // namespace lossjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(LossjaxRivalAndTrueLogit, lossjax::RivalAndTrueLogit,
                              lossjax::ffi::Ffi::Bind()
                                  .Ctx<lossjax::ffi::ThreadPool>()
                                  .Arg<lossjax::ffi::AnyBuffer>()
                                  .Arg<lossjax::ffi::Buffer<lossjax::ffi::S32>>()
                                  .Ret<lossjax::ffi::Buffer<lossjax::ffi::F32>>()
                                  .Ret<lossjax::ffi::Buffer<lossjax::ffi::F32>>());
