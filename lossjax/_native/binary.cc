// Binary focal loss's slope in each logit, for its gradient: with hard
// labels y, s = 1 - 2y, x = s z, q = sigmoid(x) = 1 - p_t, p = 1 - q and
// the cross-entropy ce = softplus(x) = -log p_t,
//   alpha_t d loss / dz = s alpha_t q^gamma (q + gamma ce p),
// alpha_t = 1/2 + s (1/2 - alpha) where weighted (else 1), in one pass over
// the logits and labels, written in the logits' type. XLA:CPU's loop of the
// same arithmetic (lossjax/losses/_binary.py, `_hard_focal_slopes`) runs
// eight lanes at a time, the slower (measured: docs/measurement.md); the
// caller scales the slope by the cotangent, in place.
//
// An XLA FFI handler (lossjax/_native/__init__.py builds and registers it):
//   logits [...] float32 or bfloat16, labels [...] int32, int8, uint8 or
//   bool, alpha and gamma float32 [k] (k = 1, or the leading axes that vmap
//   adds, each value for its n / k logits), attributes weighted (0 or 1) and
//   power (gamma as a whole number 0-8, whose q^gamma is then products as
//   `jax.lax.integer_pow`'s, else -1: exp(-gamma softplus(-x)))
//   -> slope [...] in the logits' type, computed in float32, rounded once.
// A label other than 0 and 1 reads as 2 (s = -3), as `label_signs`'; a NaN
// logit gives NaN.

#include <type_traits>

#include "rows.h"

namespace lossjax {
namespace {

// exp(x) for x <= 0, 0 below -87.33 (`Exp` returns about 1.2e-38 there), NaN
// kept: an infinite logit's e^-|z| is then 0, as XLA's.
inline Floats ExpOrZero(Floats x) {
  const Floats e = Exp(x);
  return x < -87.33f ? Floats{} : e;
}

// log(u) for u in [1, 2], NaN kept: u = m 2^k with m in [sqrt(1/2), sqrt(2)],
// and Cephes' polynomial for log(m) (within about an ulp).
inline Floats LogOneToTwo(Floats u) {
  const Ints halved = u > 1.41421356f;
  const Floats m = halved ? u * 0.5f : u, k = halved ? Floats{} + 1.0f : Floats{};
  const Floats f = m - 1.0f, f2 = f * f;
  Floats y = Floats{} + 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * f2 + k * -2.12194440e-4f - 0.5f * f2;
  return f + y + k * 0.693359375f;
}

// q^power by squarings, in `jax.lax.integer_pow`'s order of products.
inline Floats Power(Floats q, int power) {
  Floats result = Floats{} + 1.0f;
  bool first = true;
  for (; power > 0; power >>= 1) {
    if (power & 1) {
      result = first ? q : result * q;
      first = false;
    }
    if (power > 1) q = q * q;
  }
  return result;
}

struct Focal {
  float alpha, gamma;
  bool weighted;
  int power;
};

// The slope of 16 logits z with signs s = 1 - 2y, as
// `_hard_focal_slopes`: e = exp(-|z|), log1p(e) = log(u) + (e - (u - 1)) / u
// with u = 1 + e rounded, and 1 / u and e / u the two sigmoids of x.
inline Floats Slope(Floats z, Floats s, const Focal& f) {
  Words bits;
  std::memcpy(&bits, &z, sizeof bits);
  bits |= 0x80000000u;
  Floats minus_magnitude;
  std::memcpy(&minus_magnitude, &bits, sizeof bits);
  const Floats x = s * z, e = ExpOrZero(minus_magnitude);
  const Floats u = 1.0f + e, larger = 1.0f / u;
  const Floats shared = LogOneToTwo(u) + (e - (u - 1.0f)) * larger;
  const Floats smaller = e * larger;
  const Ints at_most_zero = x <= 0.0f;
  const Floats q = at_most_zero ? smaller : larger, p = at_most_zero ? larger : smaller;
  const Floats cross_entropy = (x > 0.0f ? x : Floats{}) + shared;
  const Floats modulator =
      f.power >= 0 ? Power(q, f.power)
                   : ExpOrZero(-f.gamma * ((x < 0.0f ? -x : Floats{}) + shared));
  const Floats slope = s * (modulator * (q + f.gamma * cross_entropy * p));
  return f.weighted ? (0.5f + s * (0.5f - f.alpha)) * slope : slope;
}

// 1 - 2y for 16 labels: 1 for 0, -1 for 1, -3 for any other.
inline Floats Signs(Ints y) {
  const Floats one = Floats{} + 1.0f;
  return y == 0 ? one : y == 1 ? -one : one * -3.0f;
}
inline Floats LoadSigns(const int32_t* y) {
  Ints v;
  std::memcpy(&v, y, sizeof v);
  return Signs(v);
}
inline Floats LoadSigns(const uint8_t* y) {
  typedef uint8_t Bytes __attribute__((vector_size(kLanes)));
  Bytes v;
  std::memcpy(&v, y, sizeof v);
  return Signs(__builtin_convertvector(v, Ints));
}

// The slopes of z[begin, end), one alpha and gamma: whole vectors, and the
// rest through a padded one (one inlined `Slope`: the build's time).
template <typename T, typename Y>
void Slopes(const T* z, const Y* y, T* out, int64_t begin, int64_t end, const Focal& f) {
  for (int64_t i = begin; i < end; i += kLanes) {
    const int64_t count = std::min<int64_t>(kLanes, end - i);
    T z_pad[kLanes], out_pad[kLanes];
    Y y_pad[kLanes];
    const bool whole = count == kLanes;
    if (!whole) {
      std::memset(z_pad, 0, sizeof z_pad);
      std::memset(y_pad, 0, sizeof y_pad);
      std::memcpy(z_pad, z + i, count * sizeof(T));
      std::memcpy(y_pad, y + i, count * sizeof(Y));
    }
    const Floats slope = Slope(Load(whole ? z + i : z_pad), LoadSigns(whole ? y + i : y_pad), f);
    Store(whole ? out + i : out_pad, slope);
    if (!whole) std::memcpy(out + i, out_pad, count * sizeof(T));
  }
}

// Blocks of this many logits are shared out between the threads.
constexpr int64_t kBlock = 4096;

ffi::Error BinaryFocalSlope(ffi::ThreadPool pool, ffi::AnyBuffer logits, ffi::AnyBuffer labels,
                            ffi::Buffer<ffi::F32> alpha, ffi::Buffer<ffi::F32> gamma,
                            ffi::Result<ffi::AnyBuffer> out, int32_t weighted, int32_t power) {
  const int64_t n = logits.element_count(), per_value = int64_t(alpha.element_count());
  if (int64_t(labels.element_count()) != n || out->element_count() != logits.element_count() ||
      out->element_type() != logits.element_type())
    return ffi::Error::InvalidArgument("labels and output must match the logits");
  if (per_value < 1 || int64_t(gamma.element_count()) != per_value || n % per_value != 0)
    return ffi::Error::InvalidArgument("alpha and gamma need one value each for equal shares of the logits");
  if (power > 8) return ffi::Error::InvalidArgument("power must be -1 or a whole number up to 8");
  const int64_t share = n / per_value;
  const float* a = alpha.typed_data();
  const float* g = gamma.typed_data();
  void* result = out->untyped_data();
  const auto run = [&](auto y) {
    return WithLogits(logits, [&](auto z) {
      using T = std::remove_const_t<std::remove_pointer_t<decltype(z)>>;
      T* slope = static_cast<T*>(result);
      ForRowChunks(pool, (n + kBlock - 1) / kBlock, kBlock, [=](int64_t first, int64_t last) {
        // Each stretch of the chunk within one share takes that share's alpha and gamma.
        for (int64_t i = first * kBlock, end = std::min(n, last * kBlock); i < end;) {
          const int64_t which = i / share, stop = std::min(end, (which + 1) * share);
          Slopes(z, y, slope, i, stop, Focal{a[which], g[which], weighted != 0, power});
          i = stop;
        }
      });
    });
  };
  switch (labels.element_type()) {
    case ffi::DataType::S32:
      return run(labels.typed_data<int32_t>());
    // int8 read as uint8: 0 and 1 are the same bytes, and any other stays other.
    case ffi::DataType::S8:
    case ffi::DataType::U8:
    case ffi::DataType::PRED:
      return run(static_cast<const uint8_t*>(labels.untyped_data()));
    default:
      return ffi::Error::InvalidArgument("labels must be int32, int8, uint8 or bool");
  }
}

}  // namespace
}  // namespace lossjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(LossjaxBinaryFocalSlope, lossjax::BinaryFocalSlope,
                              LOSSJAX_BIND_LOGITS.Arg<lossjax::ffi::AnyBuffer>()
                                  LOSSJAX_F32_OPERAND LOSSJAX_F32_OPERAND
                                  .Ret<lossjax::ffi::AnyBuffer>()
                                  .Attr<int32_t>("weighted")
                                  .Attr<int32_t>("power"));
