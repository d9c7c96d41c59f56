// Exploratory (issue 14): int8 x int8 GEMV with block-32 scales, the decode step's weight product, for one question:
// how close to the host's memory bandwidth can our own kernel read a SmolLM2 step's int8 weights, against
// onnxruntime's MatMulNBits (benchmarks/cpu_gemv.py times both on the same weights). Not a runtime path.
//
// y[n] = sum_b  sw[n, b] * sx[b] * sum_{k in block b} w[n, k] * xq[k]
//   w:  int8 [N, K] row-major, |w| <= 127          sw: float32 [N, K / 32]
//   xq: int8 [K] (the activation quantized a block of 32 at a time, |xq| <= 127)   sx: float32 [K / 32]
// The sign trick (as ggml's Q8_0 dot): |w| (u8) x sign(xq, w) (s8) keeps maddubs' int16 pairs from saturating.
#include <stdint.h>
#include <math.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define QK 32

const char *gemv_q8_isa(void) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return "avx512vnni";
#elif defined(__AVX2__)
    return "avx2";
#else
    return "scalar";
#endif
}

// one activation row quantized a block at a time: xq = round(x / s), s = max|x| / 127
void quantize_q8(const float *x, int k, int8_t *xq, float *sx) {
    for (int b = 0; b < k / QK; b++) {
        float amax = 0.f;
        for (int i = 0; i < QK; i++) amax = fmaxf(amax, fabsf(x[b * QK + i]));
        float s = amax / 127.f, inv = s > 0.f ? 1.f / s : 0.f;
        sx[b] = s;
        for (int i = 0; i < QK; i++) xq[b * QK + i] = (int8_t)lrintf(x[b * QK + i] * inv);
    }
}

#if defined(__AVX2__)
// one block's integer dot product, as 8 int32 partial sums
static inline __m256i dot_block(const int8_t *w, const int8_t *xq) {
    __m256i wv = _mm256_loadu_si256((const __m256i *)w), xv = _mm256_loadu_si256((const __m256i *)xq);
    __m256i u = _mm256_sign_epi8(wv, wv), v = _mm256_sign_epi8(xv, wv);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, v);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, v), _mm256_set1_epi16(1));
#endif
}
#endif

static inline float row_dot(const int8_t *w, const float *sw, const int8_t *xq, const float *sx, int nb) {
#if defined(__AVX2__)
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++)
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_block(w + b * QK, xq + b * QK)),
                              _mm256_set1_ps(sw[b] * sx[b]), acc);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
#else
    float y = 0.f;
    for (int b = 0; b < nb; b++) {
        int32_t d = 0;
        for (int i = 0; i < QK; i++) d += (int32_t)w[b * QK + i] * (int32_t)xq[b * QK + i];
        y += (float)d * sw[b] * sx[b];
    }
    return y;
#endif
}

// y[N] for one quantized activation row; the rows split over OpenMP threads
void gemv_q8(const int8_t *w, const float *sw, const int8_t *xq, const float *sx, int n, int k, float *y) {
    int nb = k / QK;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < n; r++)
        y[r] = row_dot(w + (int64_t)r * k, sw + (int64_t)r * nb, xq, sx, nb);
}

// A whole step's products in one OpenMP parallel region, as an engine would run them: for each product one thread
// quantizes its input (x[i], k[i] floats) while the others wait at the barrier, then the rows split over the team;
// no call, fork or join between products. Pointers are arrays of `count`.
void gemv_q8_chain(int count, const int8_t *const *w, const float *const *sw, const float *const *x,
                   int8_t *const *xq, float *const *sx, const int *n, const int *k, float *const *y) {
#pragma omp parallel
    for (int i = 0; i < count; i++) {
        int nb = k[i] / QK;
#pragma omp single
        quantize_q8(x[i], k[i], xq[i], sx[i]);
#pragma omp for schedule(static)
        for (int r = 0; r < n[i]; r++)
            y[i][r] = row_dot(w[i] + (int64_t)r * k[i], sw[i] + (int64_t)r * nb, xq[i], sx[i], nb);
    }
}
