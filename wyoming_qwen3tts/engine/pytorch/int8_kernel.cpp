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
#include <cstring>
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

// out[r, :n] (rows `out_stride` apart) = the product of the float32 rows x[r, :k] with the packed weights.
// Scratch buffers are kept per thread: a step calls this thousands of times a second.
void product(int64_t rows, const float* x, int64_t k, const at::Tensor& packed, const float* wscale,
             const int32_t* corr, const float* bias, float* out, int64_t n, int64_t out_stride) {
  const int64_t groups = packed.size(0);
  const int64_t kpad = packed.size(1) * 4;
  const int64_t stride = groups * CHANNELS;
  const int64_t isa = g_isa;
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> scale;
  thread_local std::vector<int32_t> sums;
  q.assign(rows * kpad, 0);
  scale.resize(rows);
  sums.resize(rows * stride);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * k;
    const float peak = std::max(isa >= AVX2 ? peak_avx2(row, k) : peak_scalar(row, k), 1e-30f);
    const float inverse = 127.f / peak;
    if (isa >= AVX2)
      quantize_avx2(row, k, inverse, q.data() + r * kpad);
    else
      quantize_scalar(row, k, inverse, q.data() + r * kpad);
    scale[r] = peak / 127.f;
  }
  const int8_t* w = packed.data_ptr<int8_t>();
  const int8_t* qs = q.data();
  int32_t* all_sums = sums.data();
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g)
      group_sums(isa, rows, qs, kpad, w + g * kpad * CHANNELS, corr + g * CHANNELS, all_sums + g * CHANNELS,
                 stride);
  });
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* row_sums = all_sums + r * stride;
    float* row = out + r * out_stride;
    const float s = scale[r];
    for (int64_t j = 0; j < n; ++j) row[j] = static_cast<float>(row_sums[j]) * (s * wscale[j]);
    if (bias != nullptr)
      for (int64_t j = 0; j < n; ++j) row[j] += bias[j];
  }
}

void check_packed(const at::Tensor& packed, const at::Tensor& wscale, const at::Tensor& corr, int64_t k, int64_t n) {
  TORCH_CHECK(packed.scalar_type() == at::kChar && packed.dim() == 3 && packed.size(2) == GROUP_BYTES &&
                  packed.is_contiguous(),
              "packed weights [groups, K/4, 256] int8 expected");
  const int64_t kpad = packed.size(1) * 4;
  TORCH_CHECK(k <= kpad && kpad < k + 4, "input has ", k, " features, the weights ", kpad);
  TORCH_CHECK(n <= packed.size(0) * CHANNELS && wscale.numel() == n && corr.numel() == packed.size(0) * CHANNELS,
              "weight scales or sums mismatch");
}

// x [..., K] (float32 or another float type) -> [rows, n] float32.
at::Tensor linear(const at::Tensor& x_any, const at::Tensor& packed, const at::Tensor& wscale,
                  const at::Tensor& corr, const c10::optional<at::Tensor>& bias, int64_t n) {
  const at::Tensor x = x_any.to(at::kFloat).contiguous();
  const int64_t k = x.size(-1);
  const int64_t rows = k == 0 ? 0 : x.numel() / k;
  check_packed(packed, wscale, corr, k, n);
  at::Tensor out = at::empty({rows, n}, x.options());
  product(rows, x.data_ptr<float>(), k, packed, wscale.data_ptr<float>(), corr.data_ptr<int32_t>(),
          bias.has_value() ? bias->data_ptr<float>() : nullptr, out.data_ptr<float>(), n, n);
  return out;
}

// ---- a whole one-token step of a decoder stack, for rows that each have their own position ---------------
// The talker and the code predictor run the same layer (RMSNorm, q/k/v, per-head q/k norms, RoPE, attention
// over the cache with grouped key/value heads, o, RMSNorm, gate/up, SiLU, down). As a TorchScript step its
// ~50 small operations a layer and the products' own calls cost a quarter of a frame (fused_steps.py);
// here they are a few loops around the products. Float32 throughout; sums over 8 lanes in a fixed order and
// no fused multiply-adds, so the AVX2 and plain paths give the same bits, and a row gives the same bits alone
// or among others.

constexpr int LANES = 8;

// sum of a[i] * b[i], as 8 lane sums added in order
float dot_scalar(const float* a, const float* b, int64_t n) {
  float lanes[LANES] = {};
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int j = 0; j < LANES; ++j) lanes[j] += a[i + j] * b[i + j];
  for (int j = 0; i + j < n; ++j) lanes[j] += a[i + j] * b[i + j];
  float sum = 0.f;
  for (float lane : lanes) sum += lane;
  return sum;
}

__attribute__((target("avx2"))) float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES)
    acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
  alignas(32) float lanes[LANES];
  _mm256_store_ps(lanes, acc);
  for (int j = 0; i + j < n; ++j) lanes[j] += a[i + j] * b[i + j];
  float sum = 0.f;
  for (float lane : lanes) sum += lane;
  return sum;
}

float dot(bool avx2, const float* a, const float* b, int64_t n) {
  return avx2 ? dot_avx2(a, b, n) : dot_scalar(a, b, n);
}

// exp(x) for x in [-87, 88] (clamped outside; NaN gives exp(-87)): x = n ln2 + r, exp(r) by a degree-7
// polynomial (Cephes' single-precision coefficients), 2^n put into the exponent. Within one ulp of exp
// (every 97th float from -87 to 88 checked), the scalar and AVX2 forms bit for bit alike.
constexpr float EXP_LO = -87.f, EXP_HI = 88.f, LOG2E = 1.44269504088896341f;
constexpr float LN2_HI = 0.693359375f, LN2_LO = -2.12194440e-4f;
constexpr float EXP_P[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                            4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

float exp_scalar(float x) {
  x = x > EXP_LO ? x : EXP_LO;  // as _mm256_max_ps(x, lo): lo for NaN
  x = x < EXP_HI ? x : EXP_HI;
  const float n = std::nearbyint(x * LOG2E);
  const float r = (x - n * LN2_HI) - n * LN2_LO;
  float p = EXP_P[0];
  for (int i = 1; i < 6; ++i) p = p * r + EXP_P[i];
  const float y = (p * (r * r) + r) + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, 4);
  return y * two_n;
}

__attribute__((target("avx2"))) __m256 exp_avx2(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(EXP_LO));
  x = _mm256_min_ps(x, _mm256_set1_ps(EXP_HI));
  const __m256 n =
      _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 r = _mm256_sub_ps(_mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(LN2_HI))),
                                 _mm256_mul_ps(n, _mm256_set1_ps(LN2_LO)));
  __m256 p = _mm256_set1_ps(EXP_P[0]);
  for (int i = 1; i < 6; ++i) p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(EXP_P[i]));
  const __m256 y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r), _mm256_set1_ps(1.f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
}

// out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i]
void silu_product_scalar(const float* gate, const float* up, float* out, int64_t n, int64_t from = 0) {
  for (int64_t i = from; i < n; ++i) out[i] = gate[i] / (1.f + exp_scalar(-gate[i])) * up[i];
}

__attribute__((target("avx2"))) void silu_product_avx2(const float* gate, const float* up, float* out, int64_t n) {
  int64_t i = 0;
  const __m256 one = _mm256_set1_ps(1.f), zero = _mm256_setzero_ps();
  for (; i + LANES <= n; i += LANES) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = exp_avx2(_mm256_sub_ps(zero, g));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
  }
  silu_product_scalar(gate, up, out, n, i);
}

// The RMSNorm of the steps (steps.py's _Norm): x * w / sqrt(sum(x^2) + floor^2), w the weight times sqrt(n).
void norm(bool avx2, const float* x, const float* w, float floor, int64_t n, float* out) {
  const float inverse = 1.f / std::sqrt(dot(avx2, x, x, n) + floor * floor);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * w[i] * inverse;
}

// The tensors of one layer in the op's list, in this order.
enum LayerTensor : int64_t {
  INPUT_NORM, POST_NORM, QK_NORM, QKV, QKV_SCALE, QKV_CORR, O, O_SCALE, O_CORR,
  GATE_UP, GATE_UP_SCALE, GATE_UP_CORR, DOWN, DOWN_SCALE, DOWN_CORR, LAYER_TENSORS
};

const float* floats(const at::Tensor& t) { return t.data_ptr<float>(); }
const int32_t* ints(const at::Tensor& t) { return t.data_ptr<int32_t>(); }

// x [R, H] float32: row r at position positions[r] of cache cache_of_row[r] (its row row_in_cache[r]). keys and
// values hold, layer by layer, each cache's [rows, kv heads, length, D] float32 tensor. floors: per layer the
// input, post-attention and q/k norm floors, then the final norm's. dims: q heads, kv heads, head dim,
// intermediate size. Returns the final norm of the stack's output [R, H].
at::Tensor step(const at::Tensor& x_in, const std::vector<at::Tensor>& params, const std::vector<double>& floors,
                const std::vector<int64_t>& dims, const at::Tensor& cos, const at::Tensor& signed_sin,
                const std::vector<at::Tensor>& keys, const std::vector<at::Tensor>& values,
                const std::vector<int64_t>& cache_of_row, const std::vector<int64_t>& row_in_cache,
                const std::vector<int64_t>& positions, double scaling) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && x_in.dim() == 2 && x_in.is_contiguous(), "x [rows, H] float32");
  TORCH_CHECK(dims.size() == 4, "dims: q heads, kv heads, head dim, intermediate");
  const int64_t q_heads = dims[0], kv_heads = dims[1], d = dims[2], inter = dims[3];
  const int64_t rows = x_in.size(0), h = x_in.size(1);
  const int64_t layers = (static_cast<int64_t>(params.size()) - 1) / LAYER_TENSORS;
  TORCH_CHECK(layers > 0 && layers * LAYER_TENSORS + 1 == static_cast<int64_t>(params.size()),
              "params: 15 a layer and the final norm");
  TORCH_CHECK(static_cast<int64_t>(floors.size()) == 3 * layers + 1, "floors: 3 a layer and the final norm");
  TORCH_CHECK(static_cast<int64_t>(cache_of_row.size()) == rows && static_cast<int64_t>(row_in_cache.size()) == rows &&
                  static_cast<int64_t>(positions.size()) == rows,
              "a cache, row and position for every row");
  TORCH_CHECK(!keys.empty() && keys.size() == values.size() && keys.size() % layers == 0, "keys and values per layer");
  TORCH_CHECK(kv_heads > 0 && q_heads % kv_heads == 0 && d > 0 && d % 2 == 0 && inter > 0,
              "q heads a multiple of kv heads, an even head dim");
  const int64_t caches = static_cast<int64_t>(keys.size()) / layers;
  TORCH_CHECK(cos.scalar_type() == at::kFloat && signed_sin.scalar_type() == at::kFloat && cos.is_contiguous() &&
                  signed_sin.is_contiguous() && cos.size(-1) == d,
              "cos and signed sin [positions, D] float32");
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(cache_of_row[r] >= 0 && cache_of_row[r] < caches, "no cache ", cache_of_row[r]);
    TORCH_CHECK(positions[r] >= 0 && positions[r] < cos.size(0), "position ", positions[r],
                " outside the rotary table");
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    for (const at::Tensor* t : {&keys[i], &values[i]}) {
      TORCH_CHECK(t->scalar_type() == at::kFloat && t->dim() == 4 && t->size(1) == kv_heads && t->size(3) == d &&
                      t->stride(3) == 1 && t->stride(2) == d,
                  "caches [rows, kv heads, length, D] float32");
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t l = 0; l < layers; ++l) {
      const at::Tensor& k = keys[l * caches + cache_of_row[r]];
      TORCH_CHECK(row_in_cache[r] >= 0 && row_in_cache[r] < k.size(0) && positions[r] < k.size(2),
                  "row ", r, " is outside its cache");
    }
  }
  const int64_t qkv_width = (q_heads + 2 * kv_heads) * d;
  for (int64_t l = 0; l < layers; ++l) {
    const at::Tensor* p = params.data() + l * LAYER_TENSORS;
    check_packed(p[QKV], p[QKV_SCALE], p[QKV_CORR], h, qkv_width);
    check_packed(p[O], p[O_SCALE], p[O_CORR], q_heads * d, h);
    check_packed(p[GATE_UP], p[GATE_UP_SCALE], p[GATE_UP_CORR], h, 2 * inter);
    check_packed(p[DOWN], p[DOWN_SCALE], p[DOWN_CORR], inter, h);
    TORCH_CHECK(p[INPUT_NORM].numel() == h && p[POST_NORM].numel() == h &&
                    p[QK_NORM].numel() == (q_heads + kv_heads) * d,
                "norm weights");
  }
  TORCH_CHECK(params.back().numel() == h, "final norm weight");

  const bool avx2 = g_isa >= AVX2;
  const int64_t group = q_heads / kv_heads, half = d / 2;
  at::Tensor x_out = x_in.clone();
  float* x = x_out.data_ptr<float>();
  std::vector<float> normed(rows * std::max(h, inter)), qkv(rows * qkv_width), attended(rows * q_heads * d);
  // Attention scores for positions 0..pos of a row: as many as the rows' furthest position needs.
  const int64_t longest = rows == 0 ? 0 : *std::max_element(positions.begin(), positions.end()) + 1;
  std::vector<float> gate_up(rows * 2 * inter), rotated(d), scores(longest);
  for (int64_t l = 0; l < layers; ++l) {
    const at::Tensor* p = params.data() + l * LAYER_TENSORS;
    for (int64_t r = 0; r < rows; ++r)
      norm(avx2, x + r * h, floats(p[INPUT_NORM]), floors[3 * l], h, normed.data() + r * h);
    product(rows, normed.data(), h, p[QKV], floats(p[QKV_SCALE]), ints(p[QKV_CORR]), nullptr, qkv.data(),
            qkv_width, qkv_width);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t pos = positions[r];
      const float* c = floats(cos) + pos * d;
      const float* s = floats(signed_sin) + pos * d;
      float* heads = qkv.data() + r * qkv_width;
      // q and k heads: each normed by its own weights, then RoPE: x * cos + roll(x, D/2) * signed sin.
      for (int64_t head = 0; head < q_heads + kv_heads; ++head) {
        float* v = heads + head * d;
        norm(avx2, v, floats(p[QK_NORM]) + head * d, floors[3 * l + 2], d, rotated.data());
        for (int64_t i = 0; i < d; ++i) v[i] = rotated[i] * c[i] + rotated[(i + half) % d] * s[i];
      }
      const at::Tensor& k_cache = keys[l * caches + cache_of_row[r]];
      const at::Tensor& v_cache = values[l * caches + cache_of_row[r]];
      for (int64_t kv = 0; kv < kv_heads; ++kv) {
        float* k_at = k_cache.data_ptr<float>() + row_in_cache[r] * k_cache.stride(0) + kv * k_cache.stride(1);
        float* v_at = v_cache.data_ptr<float>() + row_in_cache[r] * v_cache.stride(0) + kv * v_cache.stride(1);
        std::memcpy(k_at + pos * d, heads + (q_heads + kv) * d, d * sizeof(float));
        std::memcpy(v_at + pos * d, heads + (q_heads + kv_heads + kv) * d, d * sizeof(float));
        // The q heads of this kv head attend over positions 0..pos.
        for (int64_t head = kv * group; head < (kv + 1) * group; ++head) {
          const float* q = heads + head * d;
          float peak = -INFINITY;
          for (int64_t j = 0; j <= pos; ++j) {
            scores[j] = dot(avx2, q, k_at + j * d, d) * static_cast<float>(scaling);
            peak = std::max(peak, scores[j]);
          }
          float total = 0.f;
          for (int64_t j = 0; j <= pos; ++j) total += (scores[j] = exp_scalar(scores[j] - peak));
          float* out = attended.data() + r * q_heads * d + head * d;
          std::fill(out, out + d, 0.f);
          for (int64_t j = 0; j <= pos; ++j) {
            const float weight = scores[j] / total;
            const float* value = v_at + j * d;
            for (int64_t i = 0; i < d; ++i) out[i] += weight * value[i];
          }
        }
      }
    }
    product(rows, attended.data(), q_heads * d, p[O], floats(p[O_SCALE]), ints(p[O_CORR]), nullptr, normed.data(),
            h, h);
    for (int64_t i = 0; i < rows * h; ++i) x[i] += normed[i];
    for (int64_t r = 0; r < rows; ++r)
      norm(avx2, x + r * h, floats(p[POST_NORM]), floors[3 * l + 1], h, normed.data() + r * h);
    product(rows, normed.data(), h, p[GATE_UP], floats(p[GATE_UP_SCALE]), ints(p[GATE_UP_CORR]), nullptr,
            gate_up.data(), 2 * inter, 2 * inter);
    for (int64_t r = 0; r < rows; ++r) {
      const float* g = gate_up.data() + r * 2 * inter;
      if (avx2)
        silu_product_avx2(g, g + inter, normed.data() + r * inter, inter);
      else
        silu_product_scalar(g, g + inter, normed.data() + r * inter, inter);
    }
    product(rows, normed.data(), inter, p[DOWN], floats(p[DOWN_SCALE]), ints(p[DOWN_CORR]), nullptr, gate_up.data(),
            h, h);
    for (int64_t i = 0; i < rows * h; ++i) x[i] += gate_up[i];
  }
  at::Tensor result = at::empty({rows, h}, x_in.options());
  for (int64_t r = 0; r < rows; ++r)
    norm(avx2, x + r * h, floats(params.back()), floors.back(), h, result.data_ptr<float>() + r * h);
  return result;
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
  m.def(
      "int8_step(Tensor x, Tensor[] params, float[] floors, int[] dims, Tensor cos, Tensor signed_sin, "
      "Tensor(a!)[] keys, Tensor(b!)[] values, int[] cache_of_row, int[] row_in_cache, int[] positions, "
      "float scaling) -> Tensor");
  m.impl("int8_step", c10::DispatchKey::CPU, TORCH_FN(step));
  m.def("int8_isa() -> int", &isa);
  m.def("int8_set_isa(int level) -> int", &set_isa);
}
