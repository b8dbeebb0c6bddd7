// int8 x int8 products for the talker's and code predictor's one-token steps (int8_kernel.py builds it).
//
// out[r, c] = float(sum_i q[r, i] * w[c, i]) * (scale[r] * wscale[c]) (+ bias[c]), where each input row is
// quantized on its own to signed 8 bits, q = round(x * 127 / max|x|), and w holds int8 weights per output
// channel. The integer sums are exact on every path (AVX512-VNNI, AVX-VNNI, AVX2, plain C++), so each path
// gives the same bits, and a row gives the same bits alone or among others: a batch never changes a row.
//
// Weights are packed in groups of 64 output channels; a group stores, for each 4 inputs, 64 channels x 4
// bytes (256 bytes, one cache line a 16 channels), so a thread reads its groups as one forward stream and
// one VNNI instruction multiplies four inputs into 16 channels' sums.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t CHANNELS = 64;               // output channels of a packed group
constexpr int64_t GROUP_BYTES = CHANNELS * 4;  // a group's weights for four inputs
// Each step asks for the weights this far ahead in the thread's stream: the hardware prefetcher alone left
// the product at 0.80-0.95x the speed of this (the code predictor's 20 products of a step, one to four
// rows, every path; AMX Xeon, 2 threads). 2-4 KB measured alike.
constexpr int64_t PREFETCH_BYTES = 2048;

// The four cache lines of one step's weights, PREFETCH_BYTES on (past a group's end, the next group's,
// which the thread reads next; a prefetch never faults).
inline void prefetch_ahead(const int8_t* w) {
  const char* ahead = reinterpret_cast<const char*>(w) + PREFETCH_BYTES;
  for (int line = 0; line < GROUP_BYTES; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T0);
}

// The paths, by the instructions they use. The op uses the best path the CPU has, or a lower one set by
// set_isa (the tests compare them).
enum Isa : int64_t { SCALAR = 0, AVX2 = 1, AVX_VNNI = 2, AVX512_VNNI = 3 };

bool cpu_has(int64_t isa) {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
  const bool avx_vnni = avx2 && __builtin_cpu_supports("avxvnni");
  switch (isa) {
    case AVX512_VNNI: return avx512;
    case AVX_VNNI: return avx_vnni;
    case AVX2: return avx2;
    default: return true;
  }
}

// The best path at or below `level` that this CPU runs.
int64_t best_isa(int64_t level) {
  for (int64_t isa = std::min<int64_t>(level, AVX512_VNNI); isa > SCALAR; --isa)
    if (cpu_has(isa)) return isa;
  return SCALAR;
}

int64_t cpu_isa() { return best_isa(AVX512_VNNI); }

int64_t g_isa = cpu_isa();

// ---- the input rows: q = round(x * 127 / max|x|) in [-127, 127] ------------------------------------

float peak_scalar(const float* x, int64_t k) {
  float peak = 0.f;
  for (int64_t i = 0; i < k; ++i) peak = std::max(peak, std::fabs(x[i]));
  return peak;
}

__attribute__((target("avx2,fma"))) float peak_avx2(const float* x, int64_t k) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  __m256 lanes = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) lanes = _mm256_max_ps(lanes, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
  alignas(32) float stored[8];
  _mm256_store_ps(stored, lanes);
  float peak = peak_scalar(x + i, k - i);
  for (float lane : stored) peak = std::max(peak, lane);
  return peak;
}

// Rounds half to even, as the vector conversion does under the default rounding mode.
void quantize_scalar(const float* x, int64_t k, float inverse, int8_t* q) {
  for (int64_t i = 0; i < k; ++i) q[i] = static_cast<int8_t>(std::nearbyint(x[i] * inverse));
}

__attribute__((target("avx2,fma"))) void quantize_avx2(const float* x, int64_t k, float inverse, int8_t* q) {
  const __m256 scale = _mm256_set1_ps(inverse);
  // packs_epi32 then packs_epi16 interleave the four vectors' 4-byte pieces lane by lane; this puts
  // them back in order.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), scale));
    const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), scale));
    const __m256i c = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 16), scale));
    const __m256i d = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 24), scale));
    const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), _mm256_permutevar8x32_epi32(bytes, order));
  }
  quantize_scalar(x + i, k - i, inverse, q + i);
}

// acc += x (unsigned bytes) . w (signed bytes), four at a time into each 32-bit lane. In assembly, on
// registers only: GCC 12's register allocation of the intrinsics copied every accumulator on each step of
// the loop (16 moves a step beside 8 products), and a memory operand (int8_t, which may alias anything)
// made it store every accumulator each step.
__attribute__((target("avx2,avxvnni"))) inline __m256i dot_vex(__m256i acc, __m256i x, const int8_t* w) {
  const __m256i weights = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  asm("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(x), "x"(weights));
  return acc;
}

__attribute__((target("avx512f,avx512vnni"))) inline __m512i dot_evex512(__m512i acc, __m512i x, const int8_t* w) {
  const __m512i weights = _mm512_loadu_si512(w);
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(weights));
  return acc;
}

// ---- one group's sums for R rows: out[r, c] = sum_i q[r, i] * w[c, i], c < 64 ----------------------
// VNNI multiplies unsigned by signed bytes: q + 128 (q with its top bit flipped) times w, less 128 * the
// channel's weight sum (corr), is the signed sum.

template <int R>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void sums_avx512_vnni(
    const int8_t* q, int64_t kpad, const int8_t* w, const int32_t* corr, int32_t* out, int64_t stride) {
  __m512i acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < 4; ++g) acc[r][g] = _mm512_setzero_si512();
  const __m512i flip = _mm512_set1_epi32(static_cast<int>(0x80808080u));
  for (int64_t i = 0; i < kpad; i += 4, w += GROUP_BYTES) {
    prefetch_ahead(w);
    for (int r = 0; r < R; ++r) {
      const int32_t four = *reinterpret_cast<const int32_t*>(q + r * kpad + i);
      const __m512i x = _mm512_xor_si512(_mm512_set1_epi32(four), flip);
      for (int g = 0; g < 4; ++g) acc[r][g] = dot_evex512(acc[r][g], x, w + 64 * g);
    }
  }
  for (int g = 0; g < 4; ++g) {
    const __m512i c = _mm512_loadu_si512(corr + 16 * g);
    for (int r = 0; r < R; ++r) _mm512_storeu_si512(out + r * stride + 16 * g, _mm512_sub_epi32(acc[r][g], c));
  }
}

template <int R>
__attribute__((target("avx2,avxvnni"))) void sums_avx_vnni(
    const int8_t* q, int64_t kpad, const int8_t* w, const int32_t* corr, int32_t* out, int64_t stride) {
  __m256i acc[R][8];
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < 8; ++g) acc[r][g] = _mm256_setzero_si256();
  const __m256i flip = _mm256_set1_epi32(static_cast<int>(0x80808080u));
  for (int64_t i = 0; i < kpad; i += 4, w += GROUP_BYTES) {
    prefetch_ahead(w);
    for (int r = 0; r < R; ++r) {
      const int32_t four = *reinterpret_cast<const int32_t*>(q + r * kpad + i);
      const __m256i x = _mm256_xor_si256(_mm256_set1_epi32(four), flip);
      for (int g = 0; g < 8; ++g) acc[r][g] = dot_vex(acc[r][g], x, w + 32 * g);
    }
  }
  for (int g = 0; g < 8; ++g) {
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(corr + 8 * g));
    for (int r = 0; r < R; ++r)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * stride + 8 * g), _mm256_sub_epi32(acc[r][g], c));
  }
}

// Without VNNI: |q| (unsigned, at most 127) times w with q's sign, so that a pair's sum (at most
// 2 * 127 * 127) fits the 16 bits maddubs sums into; no correction needed.
template <int R>
__attribute__((target("avx2"))) void sums_avx2(
    const int8_t* q, int64_t kpad, const int8_t* w, const int32_t*, int32_t* out, int64_t stride) {
  __m256i acc[R][8];
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < 8; ++g) acc[r][g] = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t i = 0; i < kpad; i += 4, w += GROUP_BYTES) {
    prefetch_ahead(w);
    for (int r = 0; r < R; ++r) {
      const __m256i x = _mm256_set1_epi32(*reinterpret_cast<const int32_t*>(q + r * kpad + i));
      const __m256i magnitude = _mm256_abs_epi8(x);
      for (int g = 0; g < 8; ++g) {
        const __m256i signed_w =
            _mm256_sign_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 * g)), x);
        acc[r][g] =
            _mm256_add_epi32(acc[r][g], _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed_w), ones));
      }
    }
  }
  for (int g = 0; g < 8; ++g)
    for (int r = 0; r < R; ++r) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * stride + 8 * g), acc[r][g]);
}

void sums_scalar(const int8_t* q, int64_t kpad, const int8_t* w, int32_t* out) {
  std::fill(out, out + CHANNELS, 0);
  for (int64_t i = 0; i < kpad; i += 4, w += GROUP_BYTES)
    for (int64_t c = 0; c < CHANNELS; ++c)
      for (int j = 0; j < 4; ++j) out[c] += static_cast<int32_t>(q[i + j]) * static_cast<int32_t>(w[c * 4 + j]);
}

// Rows in blocks that share each weight load: four, two or one with AVX-512 (32 registers), two or one in
// 256-bit vectors (16 registers).
void group_sums(int64_t isa, int64_t rows, const int8_t* q, int64_t kpad, const int8_t* w, const int32_t* corr,
                int32_t* out, int64_t stride) {
  int64_t r = 0;
  switch (isa) {
    case AVX512_VNNI:
      for (; r + 4 <= rows; r += 4) sums_avx512_vnni<4>(q + r * kpad, kpad, w, corr, out + r * stride, stride);
      for (; r + 2 <= rows; r += 2) sums_avx512_vnni<2>(q + r * kpad, kpad, w, corr, out + r * stride, stride);
      for (; r < rows; ++r) sums_avx512_vnni<1>(q + r * kpad, kpad, w, corr, out + r * stride, stride);
      break;
    case AVX_VNNI:
      for (; r + 2 <= rows; r += 2) sums_avx_vnni<2>(q + r * kpad, kpad, w, corr, out + r * stride, stride);
      for (; r < rows; ++r) sums_avx_vnni<1>(q + r * kpad, kpad, w, corr, out + r * stride, stride);
      break;
    case AVX2:
      for (; r + 2 <= rows; r += 2) sums_avx2<2>(q + r * kpad, kpad, w, corr, out + r * stride, stride);
      for (; r < rows; ++r) sums_avx2<1>(q + r * kpad, kpad, w, corr, out + r * stride, stride);
      break;
    default:
      for (; r < rows; ++r) sums_scalar(q + r * kpad, kpad, w, out + r * stride);
  }
}

// x [..., K] (float32 or another float type) -> [rows, n] float32.
at::Tensor linear(const at::Tensor& x_any, const at::Tensor& packed, const at::Tensor& wscale,
                  const at::Tensor& corr, const c10::optional<at::Tensor>& bias, int64_t n) {
  const at::Tensor x = x_any.to(at::kFloat).contiguous();
  const int64_t k = x.size(-1);
  const int64_t rows = k == 0 ? 0 : x.numel() / k;
  const int64_t groups = packed.size(0);
  const int64_t kpad = packed.size(1) * 4;
  const int64_t stride = groups * CHANNELS;
  TORCH_CHECK(packed.scalar_type() == at::kChar && packed.dim() == 3 && packed.size(2) == GROUP_BYTES,
              "packed weights [groups, K/4, 256] int8 expected");
  TORCH_CHECK(k <= kpad && kpad < k + 4, "input has ", k, " features, the weights ", kpad);
  TORCH_CHECK(n <= stride && wscale.numel() == n && corr.numel() == stride, "weight scales or sums mismatch");
  const int64_t isa = g_isa;
  std::vector<int8_t> q(rows * kpad, 0);
  std::vector<float> scale(rows);
  const float* xp = x.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = xp + r * k;
    const float peak = std::max(isa >= AVX2 ? peak_avx2(row, k) : peak_scalar(row, k), 1e-30f);
    const float inverse = 127.f / peak;
    if (isa >= AVX2)
      quantize_avx2(row, k, inverse, q.data() + r * kpad);
    else
      quantize_scalar(row, k, inverse, q.data() + r * kpad);
    scale[r] = peak / 127.f;
  }
  std::vector<int32_t> sums(rows * stride);
  const int8_t* w = packed.data_ptr<int8_t>();
  const int32_t* c = corr.data_ptr<int32_t>();
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g)
      group_sums(isa, rows, q.data(), kpad, w + g * kpad * CHANNELS, c + g * CHANNELS, sums.data() + g * CHANNELS,
                 stride);
  });
  at::Tensor out = at::empty({rows, n}, x.options());
  float* o = out.data_ptr<float>();
  const float* ws = wscale.data_ptr<float>();
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* row_sums = sums.data() + r * stride;
    float* row = o + r * n;
    const float s = scale[r];
    for (int64_t j = 0; j < n; ++j) row[j] = static_cast<float>(row_sums[j]) * (s * ws[j]);
    if (b != nullptr)
      for (int64_t j = 0; j < n; ++j) row[j] += b[j];
  }
  return out;
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
  m.def("int8_linear(Tensor x, Tensor packed, Tensor wscale, Tensor corr, Tensor? bias, int n) -> Tensor");
  m.impl("int8_linear", c10::DispatchKey::CPU, TORCH_FN(linear));
  m.def("int8_isa() -> int", &isa);
  m.def("int8_set_isa(int level) -> int", &set_isa);
}
