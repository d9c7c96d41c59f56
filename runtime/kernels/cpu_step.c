// The kernel engine's decode step on the CPU (runtime/kernels/cpu.py builds and loads it): one token a row through
// every layer of a LLaMA/Qwen2-family fused decoder and the LM head, in ONE OpenMP parallel region, its phases
// separated by the region's barriers. It exists because onnxruntime's CPU graph pays ~300 dispatches and a thread-pool
// fork/join per operator a step (2.7 ms of a 9.4 ms SmolLM2 int8 step, llm-cpu/avx512-floor); no library runs a
// decoder layer as one parallel region over MatMulNBits weights as the bundle stores them.
//
// The arithmetic is the NumPy twin's (engine_reference.py with a8=True for int8 weights), phase by phase:
//   embed     resid[b] = embed[ids[b]]
//   a layer   qkv    = (x * ln1) @ Wqkv^T * rms(x) + bias                 (x = resid[b])
//             k, v   -> rotary on k, appended to the cache at seqlens[b]; rotary on q
//             attn   = softmax(q k^T * scale) v  over positions 0..seqlens[b]   (GQA: head h reads kv head h / group;
//                      the positions split over the threads, their partial softmaxes merged before the o-proj)
//             resid += attn @ Wo^T
//             act    = silu(g) * u,  [g | u] = (resid * ln2) @ Wgu^T * rms(resid)
//             resid += act @ Wdown^T
//   head      logits = (resid * norm) @ Whead^T * rms(resid)
// Weights: float32 [N, K] row-major, or MatMulNBits 8-bit blocks (uint8 q, a float16 scale and a uint8 zero point a
// block of `block` inputs, block a power-of-two multiple of 32): w = (q - zp) * scale. Int8 products quantize their input
// a block of 32 at a time (xq = round(x / s), s = max|x| / 127: ggml Q8_0's and MatMulNBits accuracy_level 4's rule)
// and sum exact integer dot products: y = sum_j s_w s_x (q . xq - zp sum(xq)).
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define QK 32
enum { FMT_F32 = 0, FMT_Q8 = 1 };

typedef struct {
    int32_t fmt, n, k, block;          // y [n] = W [n, k] x
    const void *w;                     // float32 [n, k] | uint8 [n, ceil(k / block) * block]
    const uint16_t *scale;             // Q8: float16 [n, ceil(k / block)]: a block's scale
    const uint8_t *zero;               // Q8: uint8 [n, ceil(k / block)]: its zero point (1 byte, not 2: a step
                                       // reads 3 bytes of scale and zero point a block of 32, not 4)
    const float *bias;                 // [n] or NULL
} Lin;

typedef struct {
    const float *ln1, *ln2;
    Lin qkv, o, gate_up, down;         // gate_up rows 0..I-1 gate, I..2I-1 up
} LayerW;

typedef struct {
    int32_t layers, hidden, inter, nh, kvh, d, vocab, capacity, max_k;
    float eps, scale;
    const float *embed, *cos, *sin, *norm;   // embed [V, H]; cos, sin [positions, D/2]
    Lin head;
    const LayerW *layer;
} Model;

typedef struct {
    int32_t batch, threads;
    const int64_t *ids;                // [B]
    const int32_t *seqlens;            // [B]: the token's position
    float *cache;                      // [L, 2, B, KVH, C, D]
    float *logits;                     // [B, V]
    float *resid, *qkv, *act;          // [B, H], [B, (NH + 2 KVH) D], [B, I]
    float *part;                       // [threads, B, NH, D + 2]: each thread's attention partials (m, l, o)
    float *work;                       // per thread: work_floats() floats
    int8_t *xq;                        // per thread: B * max_k
} State;

const char *p2o_isa(void) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return "avx512vnni";
#elif defined(__AVX512F__)
    return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
    return "avx2";
#else
    return "scalar";
#endif
}

// a thread's scratch: scores [G, C], rotated queries [NH D], merged attention [B, NH D], then prepare()'s buffer
int64_t p2o_work_floats(int32_t batch, int32_t max_k, int32_t capacity, int32_t group) {
    return (int64_t)group * capacity + (int64_t)max_k + (int64_t)batch * max_k + (int64_t)batch * max_k
           + 2 * (int64_t)batch * (max_k / QK) + batch + max_k / QK;
}

// The host's read bandwidth, the roofline a step is judged against: `threads` threads each sum their share of buf
// (bytes a multiple of 64) with the widest loads this build has; returns the seconds of the pass (the sum goes to
// p2o_read_sink, so the compiler keeps the loads).
volatile int64_t p2o_read_sink;
double p2o_read_seconds(const uint8_t *buf, int64_t bytes, int32_t threads) {
    int64_t lines = bytes / 64, total = 0;
    double t0 = omp_get_wtime();
#pragma omp parallel for schedule(static) num_threads(threads) reduction(+:total)
    for (int64_t i = 0; i < lines; i++) {
#if defined(__AVX2__)
        __m256i a = _mm256_add_epi64(_mm256_loadu_si256((const __m256i *)(buf + i * 64)),
                                     _mm256_loadu_si256((const __m256i *)(buf + i * 64 + 32)));
        total += _mm256_extract_epi64(a, 0);
#else
        int64_t v[8];
        memcpy(v, buf + i * 64, 64);
        total += v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
#endif
    }
    double t = omp_get_wtime() - t0;
    p2o_read_sink = total;
    return t;
}

static inline float h2f(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, bits;
    if (e == 0) {
        float f = ldexpf((float)m, -24);
        return s ? -f : f;
    }
    bits = e == 31 ? s | 0x7f800000 | (m << 13) : s | ((e + 112) << 23) | (m << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

// ------------------------------------------------------------------------------------------ products
static inline float dot_f32(const float *w, const float *x, int k) {
    int i = 0;
    float y = 0.f;
#if defined(__AVX512F__)
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (; i + 32 <= k; i += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
    }
    for (; i + 16 <= k; i += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
    y = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (; i + 32 <= k; i += 32) {               // four chains: a load stream deep enough to keep memory busy
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= k; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
    a0 = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    y = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
#endif
    for (; i < k; i++) y += w[i] * x[i];
    return y;
}

#if defined(__AVX2__)
// one block of 32: uint8 weights . int8 activations, as 8 int32 partial sums
static inline __m256i dot_block(const uint8_t *w, const int8_t *xq) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_loadu_si256((const __m256i *)w),
                               _mm256_loadu_si256((const __m256i *)xq));
#else   // widened to int16 (maddubs' int16 pair sums would saturate: 2 x 255 x 127 > 32767)
    __m256i w0 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)w));
    __m256i w1 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(w + 16)));
    __m256i x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)xq));
    __m256i x1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(xq + 16)));
    return _mm256_add_epi32(_mm256_madd_epi16(w0, x0), _mm256_madd_epi16(w1, x1));
#endif
}
#endif

#if defined(__AVX2__)
static inline float hsum8(__m256 v) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}
#endif

// sum_j s_w s_x (q . xq - zp sum(xq)) over the k / 32 sub-blocks; `shift`: log2(block / 32). First the sub-blocks'
// scales s_w s_x (8 at a time from the float16 scales where a block is 32) and the zero-point term, then the integer
// dot products, each scaled into two float accumulators.
static inline float dot_q8(const uint8_t *w, const uint16_t *ws, const uint8_t *wz, int shift, const int8_t *xq,
                           const float *sx, const float *sumx, int k, float *sc) {
    int nsub = k / QK, j = 0;
    float corr = 0.f;
#if defined(__AVX2__) && defined(__F16C__)
    if (shift == 0) {
        __m256 cv = _mm256_setzero_ps();
        for (; j + 8 <= nsub; j += 8) {
            __m256 s = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(ws + j))),
                                     _mm256_loadu_ps(sx + j));
            __m256 z = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(wz + j))));
            cv = _mm256_fmadd_ps(_mm256_mul_ps(s, z), _mm256_loadu_ps(sumx + j), cv);
            _mm256_storeu_ps(sc + j, s);
        }
        corr = hsum8(cv);
    }
#endif
    for (; j < nsub; j++) {
        sc[j] = h2f(ws[j >> shift]) * sx[j];
        corr += sc[j] * (float)wz[j >> shift] * sumx[j];
    }
#if defined(__AVX2__)
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (j = 0; j + 2 <= nsub; j += 2) {
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_block(w + j * QK, xq + j * QK)), _mm256_set1_ps(sc[j]), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_block(w + (j + 1) * QK, xq + (j + 1) * QK)),
                             _mm256_set1_ps(sc[j + 1]), a1);
    }
    if (j < nsub)
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_block(w + j * QK, xq + j * QK)), _mm256_set1_ps(sc[j]), a0);
    return hsum8(_mm256_add_ps(a0, a1)) - corr;
#else
    float y = 0.f;
    for (j = 0; j < nsub; j++) {
        int32_t d = 0;
        for (int i = 0; i < QK; i++) d += (int32_t)w[j * QK + i] * (int32_t)xq[j * QK + i];
        y += (float)d * sc[j];
    }
    return y - corr;
#endif
}

// A product's input as its rows read it: x * gamma (float32 products) or that quantized a block of 32 at a time
// (int8 products), with 1/rms(x) per row when gamma is given (else 1). Each thread prepares its own copy: cheaper
// than a barrier for vectors of a few thousand floats.
typedef struct {
    const float *xn;
    const int8_t *xq;
    const float *sx, *sumx, *rms;
    float *sc;                         // k / 32 floats of scratch for dot_q8
    int shift;
} Act;

static void prepare(Act *a, const Lin *L, const float *x, const float *gamma, float eps, int batch, float *buf,
                    int8_t *xqbuf, int max_k) {
    int k = L->k;
    float *xn = buf, *sx = buf + (int64_t)batch * max_k, *sumx = sx + (int64_t)batch * (max_k / QK);
    float *rms = sumx + (int64_t)batch * (max_k / QK);
    a->sc = rms + batch;
    a->shift = 0;
    if (L->fmt == FMT_Q8)
        while ((QK << a->shift) < L->block) a->shift++;
    for (int b = 0; b < batch; b++) {
        const float *xb = x + (int64_t)b * k;
        float *nb = xn + (int64_t)b * k;
        if (gamma) {
            float ss = 0.f;
            for (int i = 0; i < k; i++) ss += xb[i] * xb[i];
            rms[b] = 1.f / sqrtf(ss / (float)k + eps);
            for (int i = 0; i < k; i++) nb[i] = xb[i] * gamma[i];
        } else {
            rms[b] = 1.f;
        }
        if (L->fmt != FMT_Q8) continue;
        const float *src = gamma ? nb : xb;            // without a norm the input is quantized where it lies
        for (int j = 0; j < k / QK; j++) {
            const float *v = src + j * QK;
            float amax = 0.f;                       // plain compares and rintf: loops the compiler vectorizes
            for (int i = 0; i < QK; i++) {
                float a = fabsf(v[i]);
                amax = a > amax ? a : amax;
            }
            float s = amax / 127.f, inv = s > 0.f ? 1.f / s : 0.f;
            int32_t sum = 0;
            int8_t *q = xqbuf + (int64_t)b * k + j * QK;
            for (int i = 0; i < QK; i++) {
                int32_t r = (int32_t)rintf(v[i] * inv);   // round half to even, as numpy's rint
                q[i] = (int8_t)r;
                sum += r;
            }
            sx[b * (k / QK) + j] = s;
            sumx[b * (k / QK) + j] = (float)sum;
        }
    }
    a->xn = (L->fmt == FMT_F32 && !gamma) ? x : xn;
    a->xq = xqbuf;
    a->sx = sx;
    a->sumx = sumx;
    a->rms = rms;
}

// row r of L times batch row b of the prepared input, times 1/rms
static inline float row(const Lin *L, const Act *a, int64_t r, int b) {
    int k = L->k;
    float v;
    if (L->fmt == FMT_F32) {
        v = dot_f32((const float *)L->w + r * k, a->xn + (int64_t)b * k, k);
    } else {
        int64_t kb = ((k + L->block - 1) / L->block);
        v = dot_q8((const uint8_t *)L->w + r * kb * L->block, L->scale + r * kb, L->zero + r * kb, a->shift,
                   a->xq + (int64_t)b * k, a->sx + (int64_t)b * (k / QK), a->sumx + (int64_t)b * (k / QK), k,
                   a->sc);
    }
    return v * a->rms[b];
}

// ------------------------------------------------------------------------------------------ attention
// e^x for x in [-87, 88] (clamped there): 2^(x log2 e) as 2^n 2^f, f in [-0.5, 0.5], 2^f by its degree-6 Taylor
// polynomial (relative error ~1e-7, float32's rounding); plain float arithmetic, so loops over it vectorize and
// no libm call is made (SwiGLU takes one a gate value).
static inline float exp_approx(float x) {
    x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
    float t = x * 1.44269504088896341f;
    float n = rintf(t), f = (t - n) * 0.693147180559945309f;
    float p = 1.f + f * (1.f + f * (0.5f + f * (1.f / 6 + f * (1.f / 24 + f * (1.f / 120 + f * (1.f / 720))))));
    int32_t bits;
    memcpy(&bits, &p, 4);
    bits += (int32_t)n << 23;
    memcpy(&p, &bits, 4);
    return p;
}

static void rotate(const float *src, float *dst, const float *c, const float *s, int d) {
    int h = d / 2;
    for (int i = 0; i < h; i++) {
        float a = src[i], b = src[i + h];
        dst[i] = a * c[i] - b * s[i];
        dst[i + h] = b * c[i] + a * s[i];
    }
}

static inline float *cache_at(const Model *m, const State *s, int l, int kv, int b, int h, int pos) {
    return s->cache + ((((int64_t)l * 2 + kv) * s->batch + b) * m->kvh + h) * ((int64_t)m->capacity * m->d)
           + (int64_t)pos * m->d;
}

// scores[t] = k_t . q * scale for t in [t0, t1); eight keys at a time, their eight dot products reduced together
static void key_scores(const float *kc, int t0, int t1, int D, const float *q, float scale, float *scores) {
    int t = t0;
#if defined(__AVX2__) && defined(__FMA__)
    if (D % 8 == 0) {
        for (; t + 8 <= t1; t += 8) {
            const float *k = kc + (int64_t)t * D;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
            for (int i = 0; i < D; i += 8) {
                __m256 qv = _mm256_loadu_ps(q + i);
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(k + i), qv, a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(k + D + i), qv, a1);
                a2 = _mm256_fmadd_ps(_mm256_loadu_ps(k + 2 * D + i), qv, a2);
                a3 = _mm256_fmadd_ps(_mm256_loadu_ps(k + 3 * D + i), qv, a3);
                a4 = _mm256_fmadd_ps(_mm256_loadu_ps(k + 4 * D + i), qv, a4);
                a5 = _mm256_fmadd_ps(_mm256_loadu_ps(k + 5 * D + i), qv, a5);
                a6 = _mm256_fmadd_ps(_mm256_loadu_ps(k + 6 * D + i), qv, a6);
                a7 = _mm256_fmadd_ps(_mm256_loadu_ps(k + 7 * D + i), qv, a7);
            }
            __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
            __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
            __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20), _mm256_permute2f128_ps(h0, h1, 0x31));
            _mm256_storeu_ps(scores + t, _mm256_mul_ps(sum, _mm256_set1_ps(scale)));
        }
    }
#endif
    for (; t < t1; t++) scores[t] = dot_f32(kc + (int64_t)t * D, q, D) * scale;
}

// o[D] = sum_t p[t] v_t for t in [t0, t1); a head of 64 (or a multiple) accumulates in eight registers
static void weighted_values(const float *vc, int t0, int t1, int D, const float *p, float *o) {
#if defined(__AVX2__) && defined(__FMA__)
    if (D % 64 == 0) {
        for (int i0 = 0; i0 < D; i0 += 64) {
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
            for (int t = t0; t < t1; t++) {
                const float *v = vc + (int64_t)t * D + i0;
                __m256 pv = _mm256_set1_ps(p[t]);
                a0 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v), a0);
                a1 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + 8), a1);
                a2 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + 16), a2);
                a3 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + 24), a3);
                a4 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + 32), a4);
                a5 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + 40), a5);
                a6 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + 48), a6);
                a7 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + 56), a7);
            }
            _mm256_storeu_ps(o + i0, a0);
            _mm256_storeu_ps(o + i0 + 8, a1);
            _mm256_storeu_ps(o + i0 + 16, a2);
            _mm256_storeu_ps(o + i0 + 24, a3);
            _mm256_storeu_ps(o + i0 + 32, a4);
            _mm256_storeu_ps(o + i0 + 40, a5);
            _mm256_storeu_ps(o + i0 + 48, a6);
            _mm256_storeu_ps(o + i0 + 56, a7);
        }
        return;
    }
#endif
    for (int i = 0; i < D; i++) o[i] = 0.f;
    for (int t = t0; t < t1; t++)
        for (int i = 0; i < D; i++) o[i] += p[t] * vc[(int64_t)t * D + i];
}

// Flash-decoding over threads: each thread takes its share of every row's positions, for every head, and leaves a
// partial (max m, sum l, unnormalized output o [D]) per (row, head); combine() merges the threads' partials. A kv
// head's G query heads are scored together, so its keys and values are read once. The thread holding the row's new
// position first writes that position's rotated key and its value into the cache (no one else reads it).
static void attend_share(const Model *m, const State *s, int l, int tid, int nt, float *qr, float *scores) {
    const int D = m->d, NH = m->nh, KVH = m->kvh, G = NH / KVH, QKV = (NH + 2 * KVH) * D, half = D / 2;
    for (int b = 0; b < s->batch; b++) {
        int pos = s->seqlens[b], n = pos + 1, t0 = (int)((int64_t)n * tid / nt), t1 = (int)((int64_t)n * (tid + 1) / nt);
        const float *y = s->qkv + (int64_t)b * QKV, *c = m->cos + (int64_t)pos * half, *sn = m->sin + (int64_t)pos * half;
        for (int kv = 0; kv < KVH; kv++) {
            float *kc = cache_at(m, s, l, 0, b, kv, 0), *vc = cache_at(m, s, l, 1, b, kv, 0);
            if (t0 <= pos && pos < t1) {
                rotate(y + (NH + kv) * D, kc + (int64_t)pos * D, c, sn, D);
                memcpy(vc + (int64_t)pos * D, y + (NH + KVH + kv) * D, sizeof(float) * D);
            }
            for (int g = 0; g < G; g++) rotate(y + (kv * G + g) * D, qr + g * D, c, sn, D);
            float *part = s->part + (((int64_t)tid * s->batch + b) * NH + kv * G) * (D + 2);
            for (int g = 0; g < G; g++) {
                float *sc = scores + (int64_t)g * m->capacity, *o = part + (int64_t)g * (D + 2) + 2;
                key_scores(kc, t0, t1, D, qr + g * D, m->scale, sc);
                float mx = -INFINITY, sum = 0.f;
                for (int t = t0; t < t1; t++) mx = sc[t] > mx ? sc[t] : mx;
                for (int t = t0; t < t1; t++) {
                    sc[t] = exp_approx(sc[t] - mx);
                    sum += sc[t];
                }
                part[(int64_t)g * (D + 2)] = mx;
                part[(int64_t)g * (D + 2) + 1] = sum;
                weighted_values(vc, t0, t1, D, sc, o);
            }
        }
    }
}

// the threads' partials merged -> out [B, NH D]: sum_t e^(m_t - M) o_t / sum_t e^(m_t - M) l_t
static void combine(const Model *m, const State *s, int nt, float *out) {
    const int D = m->d, NH = m->nh;
    for (int bh = 0; bh < s->batch * NH; bh++) {
        float mx = -INFINITY, den = 0.f, *o = out + (int64_t)bh * D;
        for (int t = 0; t < nt; t++) {
            const float *p = s->part + ((int64_t)t * s->batch * NH + bh) * (D + 2);
            if (p[1] > 0.f && p[0] > mx) mx = p[0];
        }
        for (int i = 0; i < D; i++) o[i] = 0.f;
        for (int t = 0; t < nt; t++) {
            const float *p = s->part + ((int64_t)t * s->batch * NH + bh) * (D + 2);
            if (p[1] <= 0.f) continue;                  // a thread whose share of the row was empty
            float f = expf(p[0] - mx);
            den += f * p[1];
            for (int i = 0; i < D; i++) o[i] += f * p[2 + i];
        }
        float inv = 1.f / den;
        for (int i = 0; i < D; i++) o[i] *= inv;
    }
}

// ------------------------------------------------------------------------------------------ the step
// Built with -DP2O_PROFILE (kernels/cpu.py profile build), thread 0 adds each phase's seconds, barrier included,
// to p2o_phase_seconds: embed, qkv, attention, o-proj, gate|up, down, head.
#define P2O_PHASES 7
double p2o_phase_seconds[P2O_PHASES];
#ifdef P2O_PROFILE
#define MARK(i) do { if (tid == 0) { double t_ = omp_get_wtime(); p2o_phase_seconds[i] += t_ - t0_; t0_ = t_; } } while (0)
#else
#define MARK(i) do { } while (0)
#endif

void p2o_step(const Model *m, const State *s) {
    const int B = s->batch, H = m->hidden, I = m->inter, D = m->d, NH = m->nh, KVH = m->kvh;
    const int QKV = (NH + 2 * KVH) * D;
#pragma omp parallel num_threads(s->threads)
    {
        int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        float *work = s->work + (int64_t)tid * p2o_work_floats(B, m->max_k, m->capacity, NH / KVH);
        float *scores = work, *qr = scores + (int64_t)(NH / KVH) * m->capacity, *merged = qr + NH * D;
        float *buf = merged + (int64_t)B * NH * D;
        int8_t *xq = s->xq + (int64_t)tid * B * m->max_k;
        Act a;
#ifdef P2O_PROFILE
        double t0_ = omp_get_wtime();
#endif
#pragma omp for schedule(static)
        for (int b = 0; b < B; b++) memcpy(s->resid + (int64_t)b * H, m->embed + s->ids[b] * H, sizeof(float) * H);
        MARK(0);
        for (int l = 0; l < m->layers; l++) {
            const LayerW *L = m->layer + l;
            prepare(&a, &L->qkv, s->resid, L->ln1, m->eps, B, buf, xq, m->max_k);
#pragma omp for schedule(static)
            for (int r = 0; r < QKV; r++)
                for (int b = 0; b < B; b++)
                    s->qkv[(int64_t)b * QKV + r] = row(&L->qkv, &a, r, b) + (L->qkv.bias ? L->qkv.bias[r] : 0.f);
            MARK(1);
            attend_share(m, s, l, tid, nt, qr, scores);
#pragma omp barrier
            MARK(2);
            combine(m, s, nt, merged);
            prepare(&a, &L->o, merged, NULL, m->eps, B, buf, xq, m->max_k);
#pragma omp for schedule(static)
            for (int r = 0; r < H; r++)
                for (int b = 0; b < B; b++) s->resid[(int64_t)b * H + r] += row(&L->o, &a, r, b);
            MARK(3);
            prepare(&a, &L->gate_up, s->resid, L->ln2, m->eps, B, buf, xq, m->max_k);
#pragma omp for schedule(static)
            for (int r = 0; r < I; r++)
                for (int b = 0; b < B; b++) {
                    float g = row(&L->gate_up, &a, r, b), u = row(&L->gate_up, &a, r + I, b);
                    s->act[(int64_t)b * I + r] = g / (1.f + exp_approx(-g)) * u;
                }
            MARK(4);
            prepare(&a, &L->down, s->act, NULL, m->eps, B, buf, xq, m->max_k);
#pragma omp for schedule(static)
            for (int r = 0; r < H; r++)
                for (int b = 0; b < B; b++) s->resid[(int64_t)b * H + r] += row(&L->down, &a, r, b);
            MARK(5);
        }
        prepare(&a, &m->head, s->resid, m->norm, m->eps, B, buf, xq, m->max_k);
#pragma omp for schedule(static)
        for (int r = 0; r < m->vocab; r++)
            for (int b = 0; b < B; b++) s->logits[(int64_t)b * m->vocab + r] = row(&m->head, &a, r, b);
        MARK(6);
    }
}
