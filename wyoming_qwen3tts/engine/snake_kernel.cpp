// The codec's SnakeBeta activation in one pass (engine/native.py builds it, codec_kernels.Snake runs it).
//
// out[b, c, t] = x + inverse_beta[c] * sin(alpha[c] * x)^2, computed in float32 from float32 or bfloat16 x
// and rounded once to out's dtype. PyTorch runs it as five passes over the samples (a product, sin, square,
// product, sum), each rounding to bfloat16 in a bfloat16 codec: 20 % of the bfloat16 codec's time at the
// real dimensions, and five roundings where this makes one. sin^2 is a polynomial of our own, the same
// operations in the same order on every path (AVX-512, AVX2, plain C++), so every path gives the same bits.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace {

enum Isa : int64_t { SCALAR = 0, AVX2 = 1, AVX512 = 2 };

bool cpu_has(int64_t isa) {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2");
  switch (isa) {
    case AVX512: return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                        __builtin_cpu_supports("avx512bw");
    case AVX2: return avx2;
    default: return true;
  }
}

int64_t best_isa(int64_t level) {
  for (int64_t isa = std::min<int64_t>(level, AVX512); isa > SCALAR; --isa)
    if (cpu_has(isa)) return isa;
  return SCALAR;
}

int64_t g_isa = best_isa(AVX512);

// sin(z)^2 with z = n * pi/2 + r, |r| <= pi/4 (pi/2 in three parts, so r keeps its bits for |z| up to
// LIMIT): sin(r)^2 for even n, cos(r)^2 for odd n; the sign of either does not matter once squared.
// Minimax polynomials of sin and cos on [-pi/4, pi/4] (Cephes' single-precision coefficients), within a
// few float32 units in the last place. Beyond LIMIT (or NaN, infinity) std::sin.
constexpr float TWO_OVER_PI = 0.636619772367581343f;
constexpr float PIO2_1 = 1.5703125f;
constexpr float PIO2_2 = 4.837512969970703125e-4f;
constexpr float PIO2_3 = 7.54978995489188216e-8f;
constexpr float S1 = -1.6666654611e-1f, S2 = 8.3321608736e-3f, S3 = -1.9515295891e-4f;
constexpr float C1 = 4.166664568298827e-2f, C2 = -1.388731625493765e-3f, C3 = 2.443315711809948e-5f;
constexpr float LIMIT = 8192.f;

float sin2_scalar(float z) {
  if (!(std::fabs(z) <= LIMIT)) {
    const float s = std::sin(z);
    return s * s;
  }
  const float n = std::nearbyint(z * TWO_OVER_PI);
  float r = z - n * PIO2_1;
  r = r - n * PIO2_2;
  r = r - n * PIO2_3;
  const float r2 = r * r;
  const float s = r + r * (r2 * (S1 + r2 * (S2 + r2 * S3)));
  const float c = (1.f - 0.5f * r2) + (r2 * r2) * (C1 + r2 * (C2 + r2 * C3));
  const float v = (static_cast<int32_t>(n) & 1) ? c : s;
  return v * v;
}

float snake_scalar(float x, float alpha, float inverse_beta) { return x + inverse_beta * sin2_scalar(x * alpha); }

float to_float(float x) { return x; }
float to_float(at::BFloat16 x) { return static_cast<float>(x); }
void store(float* out, float v) { *out = v; }
void store(at::BFloat16* out, float v) { *out = at::BFloat16(v); }  // round to nearest even; NaN 0x7FC0

template <typename T>
void row_scalar(const T* x, T* out, int64_t from, int64_t n, float alpha, float inverse_beta) {
  for (int64_t i = from; i < n; ++i) store(out + i, snake_scalar(to_float(x[i]), alpha, inverse_beta));
}

// ---- AVX-512: 16 samples at a time ---------------------------------------------------------------

__attribute__((target("avx512f,avx512dq"))) inline __m512 sin2_avx512(__m512 z) {
  const __m512 n =
      _mm512_roundscale_ps(_mm512_mul_ps(z, _mm512_set1_ps(TWO_OVER_PI)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_sub_ps(z, _mm512_mul_ps(n, _mm512_set1_ps(PIO2_1)));
  r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(PIO2_2)));
  r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(PIO2_3)));
  const __m512 r2 = _mm512_mul_ps(r, r);
  __m512 s = _mm512_add_ps(_mm512_set1_ps(S2), _mm512_mul_ps(r2, _mm512_set1_ps(S3)));
  s = _mm512_add_ps(_mm512_set1_ps(S1), _mm512_mul_ps(r2, s));
  s = _mm512_add_ps(r, _mm512_mul_ps(r, _mm512_mul_ps(r2, s)));
  __m512 c = _mm512_add_ps(_mm512_set1_ps(C2), _mm512_mul_ps(r2, _mm512_set1_ps(C3)));
  c = _mm512_add_ps(_mm512_set1_ps(C1), _mm512_mul_ps(r2, c));
  c = _mm512_add_ps(_mm512_sub_ps(_mm512_set1_ps(1.f), _mm512_mul_ps(_mm512_set1_ps(0.5f), r2)),
                    _mm512_mul_ps(_mm512_mul_ps(r2, r2), c));
  const __mmask16 odd = _mm512_test_epi32_mask(_mm512_cvtps_epi32(n), _mm512_set1_epi32(1));
  const __m512 v = _mm512_mask_blend_ps(odd, s, c);
  return _mm512_mul_ps(v, v);
}

template <typename T>
__attribute__((target("avx512f,avx512dq,avx512bw"))) void row_avx512(const T* x, T* out, int64_t n, float alpha,
                                                                   float inverse_beta) {
  const __m512 a = _mm512_set1_ps(alpha), b = _mm512_set1_ps(inverse_beta), limit = _mm512_set1_ps(LIMIT);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v;
    if constexpr (std::is_same_v<T, float>) {
      v = _mm512_loadu_ps(x + i);
    } else {
      const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
      v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
    }
    const __m512 z = _mm512_mul_ps(v, a);
    if (_mm512_cmp_ps_mask(_mm512_abs_ps(z), limit, _CMP_NLE_UQ)) {  // beyond the polynomial's range
      row_scalar(x + i, out + i, 0, 16, alpha, inverse_beta);
      continue;
    }
    const __m512 y = _mm512_add_ps(v, _mm512_mul_ps(b, sin2_avx512(z)));
    if constexpr (std::is_same_v<T, float>) {
      _mm512_storeu_ps(out + i, y);
    } else {  // round to nearest even, NaN to 0x7FC0, as c10::BFloat16 does
      const __m512i bits = _mm512_castps_si512(y);
      const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
      __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
      rounded = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q), rounded, _mm512_set1_epi32(0x7FC0));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm512_cvtepi32_epi16(rounded));
    }
  }
  row_scalar(x, out, i, n, alpha, inverse_beta);
}

// ---- AVX2: 8 samples at a time ---------------------------------------------------------------------

__attribute__((target("avx2"))) inline __m256 sin2_avx2(__m256 z) {
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(z, _mm256_set1_ps(TWO_OVER_PI)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_sub_ps(z, _mm256_mul_ps(n, _mm256_set1_ps(PIO2_1)));
  r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(PIO2_2)));
  r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(PIO2_3)));
  const __m256 r2 = _mm256_mul_ps(r, r);
  __m256 s = _mm256_add_ps(_mm256_set1_ps(S2), _mm256_mul_ps(r2, _mm256_set1_ps(S3)));
  s = _mm256_add_ps(_mm256_set1_ps(S1), _mm256_mul_ps(r2, s));
  s = _mm256_add_ps(r, _mm256_mul_ps(r, _mm256_mul_ps(r2, s)));
  __m256 c = _mm256_add_ps(_mm256_set1_ps(C2), _mm256_mul_ps(r2, _mm256_set1_ps(C3)));
  c = _mm256_add_ps(_mm256_set1_ps(C1), _mm256_mul_ps(r2, c));
  c = _mm256_add_ps(_mm256_sub_ps(_mm256_set1_ps(1.f), _mm256_mul_ps(_mm256_set1_ps(0.5f), r2)),
                    _mm256_mul_ps(_mm256_mul_ps(r2, r2), c));
  const __m256i one = _mm256_set1_epi32(1);
  const __m256 odd = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(_mm256_cvtps_epi32(n), one), one));
  const __m256 v = _mm256_blendv_ps(s, c, odd);
  return _mm256_mul_ps(v, v);
}

template <typename T>
__attribute__((target("avx2"))) void row_avx2(const T* x, T* out, int64_t n, float alpha, float inverse_beta) {
  const __m256 a = _mm256_set1_ps(alpha), b = _mm256_set1_ps(inverse_beta), limit = _mm256_set1_ps(LIMIT);
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v;
    if constexpr (std::is_same_v<T, float>) {
      v = _mm256_loadu_ps(x + i);
    } else {
      const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i));
      v = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
    }
    const __m256 z = _mm256_mul_ps(v, a);
    if (_mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(z, magnitude), limit, _CMP_NLE_UQ))) {
      row_scalar(x + i, out + i, 0, 8, alpha, inverse_beta);
      continue;
    }
    const __m256 y = _mm256_add_ps(v, _mm256_mul_ps(b, sin2_avx2(z)));
    if constexpr (std::is_same_v<T, float>) {
      _mm256_storeu_ps(out + i, y);
    } else {
      const __m256i bits = _mm256_castps_si256(y);
      const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
      __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
      const __m256 nan = _mm256_cmp_ps(y, y, _CMP_UNORD_Q);
      rounded = _mm256_castps_si256(
          _mm256_blendv_ps(_mm256_castsi256_ps(rounded), _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC0)), nan));
      const __m128i packed =
          _mm_packus_epi32(_mm256_castsi256_si128(rounded), _mm256_extracti128_si256(rounded, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), packed);
    }
  }
  row_scalar(x, out, i, n, alpha, inverse_beta);
}

template <typename T>
void run(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& inverse_beta, at::Tensor& out) {
  const int64_t channels = x.size(1), length = x.size(2);
  const float* a = alpha.data_ptr<float>();
  const float* b = inverse_beta.data_ptr<float>();
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t isa = g_isa;
  at::parallel_for(0, x.size(0) * channels, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, length)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t row = begin; row < end; ++row) {
                       const int64_t r = row / channels, c = row % channels;
                       const T* in = xp + r * x.stride(0) + c * x.stride(1);
                       T* to = op + r * out.stride(0) + c * out.stride(1);
                       if (isa == AVX512)
                         row_avx512(in, to, length, a[c], b[c]);
                       else if (isa == AVX2)
                         row_avx2(in, to, length, a[c], b[c]);
                       else
                         row_scalar(in, to, 0, length, a[c], b[c]);
                     }
                   });
}

// x [B, C, T] -> out (same shape and dtype, e.g. the new part of a conv's padded input), both with
// samples contiguous; alpha and inverse_beta [C] float32.
void snake(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& inverse_beta, at::Tensor out) {
  TORCH_CHECK(x.dim() == 3 && out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type(),
              "snake: x [B, C, T] and out of its shape and dtype expected");
  TORCH_CHECK(x.stride(2) == 1 && out.stride(2) == 1, "snake: samples must be contiguous");
  TORCH_CHECK(alpha.scalar_type() == at::kFloat && inverse_beta.scalar_type() == at::kFloat &&
                  alpha.is_contiguous() && inverse_beta.is_contiguous() && alpha.numel() == x.size(1) &&
                  inverse_beta.numel() == x.size(1),
              "snake: alpha and inverse_beta [C] float32 expected");
  if (x.scalar_type() == at::kFloat)
    run<float>(x, alpha, inverse_beta, out);
  else if (x.scalar_type() == at::kBFloat16)
    run<at::BFloat16>(x, alpha, inverse_beta, out);
  else
    TORCH_CHECK(false, "snake: float32 or bfloat16 expected, got ", x.scalar_type());
}

int64_t isa() { return g_isa; }

// Uses the best path at or below `level` that the CPU runs; returns the one in use before.
int64_t set_isa(int64_t level) {
  const int64_t before = g_isa;
  g_isa = best_isa(level);
  return before;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qwen3tts, m) {
  m.def("snake(Tensor x, Tensor alpha, Tensor inverse_beta, Tensor(a!) out) -> ()");
  m.impl("snake", c10::DispatchKey::CPU, TORCH_FN(snake));
  m.def("snake_isa() -> int", &isa);
  m.def("snake_set_isa(int level) -> int", &set_isa);
}
