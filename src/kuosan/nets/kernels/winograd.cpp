// 3x3 stride-1 padding-1 convolution of channels_last tensors by Winograd's minimal filtering F(m x m, 3 x 3)
// (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks", eq. 8 and section 4):
//   Y = A^T [ U (.) V ] A,   U = G g G^T,   V = B^T d B,
// for each m x m output tile Y of one channel pair, its (m+2) x (m+2) input patch d and the 3x3 filter g;
// summed over input channels, the (m+2)^2 element-wise products become as many matrix products
// M_k = V_k U_k ([tiles, Ci] x [Ci, Co]). F(2x2, 3x3): 16 multiply-adds per 4 outputs where the direct
// convolution takes 36 (2.25x fewer); F(4x4, 3x3): 36 per 16 (4x fewer), at a larger rounding error (its
// transforms hold 1/6, 1/24 and 8). The matrices are in Wino<m> below.
// Backward: the input gradient is the same convolution of dY with the flipped, transposed filter; the filter
// gradient is dU_k = V_k^T dM_k with dM = A dY A^T, then dg = G^T dU G: the same reduction in multiply-adds.
//
// Tiles are processed in blocks of TB: transform the block's input into V (in the core's cache), run the
// products with register-blocked kernels, transform back. Ci and Co are multiples of 16. float32 throughout,
// or (on CPUs with AVX512-BF16) bfloat16 activations and products with float32 sums, transforms and filters.
// Also here: 1x1 convolutions as plain products, reusing the same kernels. The caller (kuosan.nets.kernels)
// checks shapes, layouts and dtypes.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include <omp.h>
#if defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));  // unaligned loads and stores

inline v16 ld(const float* p) { return *reinterpret_cast<const v16u*>(p); }
inline void st(float* p, v16 v) { *reinterpret_cast<v16u*>(p) = v; }
inline v16 bc(const float* p) {  // broadcast p[0] (not v16{} + s: an add of +0 that -0 forbids eliding)
#ifdef __AVX512F__
    return reinterpret_cast<v16>(_mm512_set1_ps(*p));
#else
    const float s = *p;
    return v16{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s};
#endif
}

// bfloat16 storage (uint16_t): widened to float for all arithmetic, rounded to nearest even when stored.
inline v16 ldx(const float* p) { return ld(p); }
inline void stx(float* p, v16 v) { st(p, v); }
#ifdef __AVX512BF16__
inline v16 ldx(const uint16_t* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return reinterpret_cast<v16>(_mm512_slli_epi32(wide, 16));
}
inline void stx(uint16_t* p, v16 v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(reinterpret_cast<__m512>(v))));
}
#endif

constexpr int TB = 24;  // tiles per block: a multiple of both kernels' row counts (6 and 12)

// The transforms of F(m x m, 3 x 3) on n x n = (m + 2) x (m + 2) patches. F(2, 3): Lavin & Gray 2016, eq. 7;
// F(4, 3): their section 4.2 (interpolation points 0, +-1, +-2 and infinity).
template <int m> struct Wino;
template <> struct Wino<2> {
    static constexpr int n = 4;
    static constexpr float BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
    static constexpr float G[4][3] = {{1, 0, 0}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f}, {0, 0, 1}};
    static constexpr float AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
};
template <> struct Wino<4> {
    static constexpr int n = 6;
    static constexpr float BT[6][6] = {{4, 0, -5, 0, 1, 0}, {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                                       {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
    static constexpr float G[6][3] = {{0.25f, 0, 0}, {-1 / 6.0f, -1 / 6.0f, -1 / 6.0f}, {-1 / 6.0f, 1 / 6.0f, -1 / 6.0f},
                                      {1 / 24.0f, 1 / 12.0f, 1 / 6.0f}, {1 / 24.0f, -1 / 12.0f, 1 / 6.0f}, {0, 0, 1}};
    static constexpr float AT[4][6] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0},
                                       {0, 1, -1, 8, -8, 1}};
};

// sum_j c[j] v[j] over the non-zero constants c (the loops unroll, so the zeros and ones cost nothing).
template <int len>
inline v16 combine(const float (&c)[len], const v16* v, long stride = 1) {
    v16 acc{};
    bool first = true;
#pragma GCC unroll 8
    for (int j = 0; j < len; ++j) {
        if (c[j] == 0.0f) continue;
        const v16 term = c[j] == 1.0f ? v[j * stride] : c[j] == -1.0f ? -v[j * stride] : c[j] * v[j * stride];
        acc = first ? term : acc + term;
        first = false;
    }
    return acc;
}

template <int m>
struct Geometry {
    long N, H, W, th, tw, tiles;
    explicit Geometry(long n, long h, long w) : N(n), H(h), W(w), th((h + m - 1) / m), tw((w + m - 1) / m),
                                                 tiles(n * ((h + m - 1) / m) * ((w + m - 1) / m)) {}
    void locate(long t, long& image, long& row, long& col) const {
        const long per_image = th * tw;
        image = t / per_image;
        row = m * ((t % per_image) / tw);
        col = m * (t % tw);
    }
};

// Row r of each of the nn blocks [nn][TB][C] set to zero: a tile past the end of the tensor.
template <class T>
inline void zero_row(T* blocks, int nn, int r, long C) {
    for (int k = 0; k < nn; ++k) std::memset(blocks + (k * TB + r) * C, 0, sizeof(T) * C);
}

// V[k][r][c] = (B^T d B)[k] for the tiles t0 .. t0+count of x ([N, H, W, C]); rows past count are zero.
template <int m, class In, class VOut>
void input_transform(const In* x, const Geometry<m>& g, long C, long t0, int count, VOut* V) {
    using T = Wino<m>;
    constexpr int n = T::n;
    for (int r = 0; r < TB; ++r) {
        if (r >= count) {
            zero_row(V, n * n, r, C);
            continue;
        }
        long img, y0, x0;
        g.locate(t0 + r, img, y0, x0);
        --y0, --x0;  // padding 1
        const In* rows[n];
        bool col_ok[n];
        for (int a = 0; a < n; ++a) {
            const long yy = y0 + a;
            rows[a] = (yy >= 0 && yy < g.H) ? x + ((img * g.H + yy) * g.W) * C : nullptr;
            col_ok[a] = (x0 + a >= 0 && x0 + a < g.W);
        }
        for (long c = 0; c < C; c += 16) {
            v16 d[n][n], t[n][n];
            for (int a = 0; a < n; ++a)
                for (int b = 0; b < n; ++b)
                    d[a][b] = (rows[a] && col_ok[b]) ? ldx(rows[a] + (x0 + b) * C + c) : v16{};
#pragma GCC unroll 8
            for (int a = 0; a < n; ++a)  // B^T d
#pragma GCC unroll 8
                for (int b = 0; b < n; ++b) t[a][b] = combine<n>(T::BT[a], &d[0][b], n);
#pragma GCC unroll 8
            for (int a = 0; a < n; ++a)  // (B^T d) B
#pragma GCC unroll 8
                for (int b = 0; b < n; ++b) stx(V + ((a * n + b) * TB + r) * C + c, combine<n>(T::BT[b], t[a]));
        }
    }
}

// dM[k][r][c] = (A dY A^T)[k] for the tiles' m x m output gradients (zero outside the image); rows past count
// are zero.
template <int m, class In>
void grad_transform(const In* dy, const Geometry<m>& g, long C, long t0, int count, float* dM) {
    using T = Wino<m>;
    constexpr int n = T::n;
    for (int r = 0; r < TB; ++r) {
        if (r >= count) {
            zero_row(dM, n * n, r, C);
            continue;
        }
        long img, y0, x0;
        g.locate(t0 + r, img, y0, x0);
        for (long c = 0; c < C; c += 16) {
            v16 e[m][m], q[n][m];
            for (int i = 0; i < m; ++i)
                for (int j = 0; j < m; ++j)
                    e[i][j] = (y0 + i < g.H && x0 + j < g.W) ? ldx(dy + ((img * g.H + y0 + i) * g.W + x0 + j) * C + c)
                                                            : v16{};
#pragma GCC unroll 8
            for (int a = 0; a < n; ++a)  // A dY
#pragma GCC unroll 8
                for (int j = 0; j < m; ++j) {
                    v16 acc{};
#pragma GCC unroll 8
                    for (int i = 0; i < m; ++i)
                        if (T::AT[i][a] != 0.0f) acc += T::AT[i][a] * e[i][j];
                    q[a][j] = acc;
                }
#pragma GCC unroll 8
            for (int a = 0; a < n; ++a)  // (A dY) A^T
#pragma GCC unroll 8
                for (int b = 0; b < n; ++b) {
                    v16 acc{};
#pragma GCC unroll 8
                    for (int j = 0; j < m; ++j)
                        if (T::AT[j][b] != 0.0f) acc += T::AT[j][b] * q[a][j];
                    st(dM + ((a * n + b) * TB + r) * C + c, acc);
                }
        }
    }
}

// y tiles = A^T M A (+ bias) from M[k][r][c], written where they fall inside the image.
template <int m, class Out>
void output_transform(const float* M, const float* bias, const Geometry<m>& g, long C, long t0, int count, Out* y) {
    using T = Wino<m>;
    constexpr int n = T::n;
    for (int r = 0; r < count; ++r) {
        long img, y0, x0;
        g.locate(t0 + r, img, y0, x0);
        const int rows = static_cast<int>(std::min<long>(m, g.H - y0)), cols = static_cast<int>(std::min<long>(m, g.W - x0));
        Out* p = y + ((img * g.H + y0) * g.W + x0) * C;
        for (long c = 0; c < C; c += 16) {
            v16 mm[n][n], s[m][n];
            for (int k = 0; k < n * n; ++k) mm[k / n][k % n] = ld(M + (k * TB + r) * C + c);
#pragma GCC unroll 8
            for (int i = 0; i < m; ++i)  // A^T M
#pragma GCC unroll 8
                for (int b = 0; b < n; ++b) s[i][b] = combine<n>(T::AT[i], &mm[0][b], n);
            const v16 bb = bias ? ld(bias + c) : v16{};
#pragma GCC unroll 8
            for (int i = 0; i < m; ++i)
#pragma GCC unroll 8
                for (int j = 0; j < m; ++j)
                    if (i < rows && j < cols) stx(p + (i * g.W + j) * C + c, combine<n>(T::AT[j], s[i]) + bb);
        }
    }
}

// The products' register blocking: vf holds VL floats, one vector register (16 with AVX512, 8 with AVX2).
#ifdef __AVX512F__
constexpr int VL = 16;
#else
constexpr int VL = 8;
#endif
typedef float vf __attribute__((vector_size(4 * VL)));
typedef float vfu __attribute__((vector_size(4 * VL), aligned(4)));
inline vf ldv(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline void stv(float* p, vf v) { *reinterpret_cast<vfu*>(p) = v; }
inline vf bcv(const float* p) {
#if defined(__AVX512F__)
    return reinterpret_cast<vf>(_mm512_set1_ps(*p));
#elif defined(__AVX__)
    return reinterpret_cast<vf>(_mm256_set1_ps(*p));
#else
    vf v;
    for (int i = 0; i < VL; ++i) v[i] = *p;
    return v;
#endif
}
inline void pin(vf& v) {  // keep v in a register: folded into each FMA it would be loaded again each time
#if defined(__AVX512F__)
    __asm__("" : "+v"(v));
#elif defined(__AVX__)
    __asm__("" : "+x"(v));
#else
    (void)v;
#endif
}

// out[R rows][VL J] = a[R][K] (row stride lda) x b[K][VL J] (row stride ldb) (+ bias[VL J]); overwrite.
template <int R, int J>
inline void gemm_block(const float* a, long lda, const float* b, long ldb, long K, float* out, long ldo,
                       const float* bias) {
    vf acc[R][J];
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < J; ++j) acc[r][j] = bias ? ldv(bias + VL * j) : vf{};
    for (long k = 0; k < K; ++k) {
        vf bv[J];
        for (int j = 0; j < J; ++j) bv[j] = ldv(b + k * ldb + VL * j);
        for (int r = 0; r < R; ++r) {
            const vf av = bcv(a + r * lda + k);
            for (int j = 0; j < J; ++j) acc[r][j] += av * bv[j];
        }
    }
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < J; ++j) stv(out + r * ldo + VL * j, acc[r][j]);
}

// The last M % R rows, one kernel instantiation per count.
template <int R, int J>
inline void gemm_tail(int rows, const float* a, long lda, const float* b, long ldb, long K, float* out, long ldo,
                      const float* bias) {
    if constexpr (R > 0) {
        if (rows == R) return gemm_block<R, J>(a, lda, b, ldb, K, out, ldo, bias);
        gemm_tail<R - 1, J>(rows, a, lda, b, ldb, K, out, ldo, bias);
    }
}

template <int R, int J>
inline void gemm_rows(const float* a, long lda, const float* b, long ldb, long M, long K, float* out, long ldo,
                      const float* bias) {
    long r = 0;
    for (; r + R <= M; r += R) gemm_block<R, J>(a + r * lda, lda, b, ldb, K, out + r * ldo, ldo, bias);
    if (r < M) gemm_tail<R - 1, J>(static_cast<int>(M - r), a + r * lda, lda, b, ldb, K, out + r * ldo, ldo, bias);
}

// out[M][N] = a[M][K] b[K][N] (+ bias[N]), N a multiple of 16. Register blocks: with AVX512 6 x 64 or
// 12 x 32/16 (24 of 32 registers accumulate), with AVX2 6 x 16 (12 of 16).
void gemm_nn(const float* a, long lda, const float* b, long ldb, long M, long K, long N, float* out, long ldo,
             const float* bias) {
    long j = 0;
#ifdef __AVX512F__
    for (; j + 64 <= N; j += 64) gemm_rows<6, 4>(a, lda, b + j, ldb, M, K, out + j, ldo, bias ? bias + j : nullptr);
    for (; j + 32 <= N; j += 32) gemm_rows<12, 2>(a, lda, b + j, ldb, M, K, out + j, ldo, bias ? bias + j : nullptr);
    for (; j < N; j += 16) gemm_rows<12, 1>(a, lda, b + j, ldb, M, K, out + j, ldo, bias ? bias + j : nullptr);
#else
    for (; j < N; j += 16) gemm_rows<6, 2>(a, lda, b + j, ldb, M, K, out + j, ldo, bias ? bias + j : nullptr);
#endif
}

// M_k = V_k U_k for the n^2 k: V [n^2][TB][Ci], U [n^2][Ci][Co], M [n^2][TB][Co].
void block_products(int nn, const float* V, const float* U, long Ci, long Co, float* M) {
    for (int k = 0; k < nn; ++k) gemm_nn(V + k * TB * Ci, Ci, U + k * Ci * Co, Co, TB, Ci, Co, M + k * TB * Co, Co,
                                         nullptr);
}

// out[R m][VL J n] += sum_t a[t][m] b[t][n] over T rows (row strides lda, ldb).
template <int R, int J>
inline void gemm_tn_block(const float* a, long lda, const float* b, long ldb, long T, float* out, long ldo) {
    vf acc[R][J];
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < J; ++j) acc[r][j] = ldv(out + r * ldo + VL * j);
    for (long t = 0; t < T; ++t) {
        vf bv[J];
        for (int j = 0; j < J; ++j) {
            bv[j] = ldv(b + t * ldb + VL * j);
            pin(bv[j]);
        }
        for (int r = 0; r < R; ++r) {
            const vf av = bcv(a + t * lda + r);
            for (int j = 0; j < J; ++j) acc[r][j] += av * bv[j];
        }
    }
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < J; ++j) stv(out + r * ldo + VL * j, acc[r][j]);
}

// out[M][N] += a[T][M]^T b[T][N]; M a multiple of 4, N of 16.
void gemm_tn(const float* a, long lda, const float* b, long ldb, long T, long M, long N, float* out, long ldo) {
    for (long i = 0; i < M; i += 4) {
        long j = 0;
#ifdef __AVX512F__
        for (; j + 64 <= N; j += 64) gemm_tn_block<4, 4>(a + i, lda, b + j, ldb, T, out + i * ldo + j, ldo);
        for (; j + 32 <= N; j += 32) gemm_tn_block<4, 2>(a + i, lda, b + j, ldb, T, out + i * ldo + j, ldo);
        for (; j < N; j += 16) gemm_tn_block<4, 1>(a + i, lda, b + j, ldb, T, out + i * ldo + j, ldo);
#else
        for (; j < N; j += 16) gemm_tn_block<4, 2>(a + i, lda, b + j, ldb, T, out + i * ldo + j, ldo);
#endif
    }
}

void block_weight_products(int nn, const float* V, const float* dM, long Ci, long Co, float* dU) {
    for (int k = 0; k < nn; ++k) gemm_tn(V + k * TB * Ci, Ci, dM + k * TB * Co, Co, TB, Ci, Co, dU + k * Ci * Co, Co);
}

// sum[c] += sum of rows of x [rows][C] (C a multiple of 16).
template <class In>
void add_rows(const In* x, long rows, long C, float* sum) {
    for (long c = 0; c < C; c += 16) {
        v16 acc = ld(sum + c);
        for (long r = 0; r < rows; ++r) acc += ldx(x + r * C + c);
        st(sum + c, acc);
    }
}

#ifdef __AVX512BF16__
// bfloat16 products with AVX512-BF16 (vdpbf16ps: each float32 lane adds the product of a pair of bfloat16
// values), float32 accumulation. The reduction dimension is stored in pairs: b[kp][n] holds the bfloat16 values
// of rows 2 kp and 2 kp + 1 of column n in one 32-bit word.

// out[R][16 J] = a[R][K] (bfloat16 rows, stride lda in pairs) x b[K/2][16 J] (pairs, stride ldb).
template <int R, int J>
inline void gemm_block_bf16(const uint32_t* a, long lda, const uint32_t* b, long ldb, long K2, float* out, long ldo) {
    __m512 acc[R][J];
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < J; ++j) acc[r][j] = _mm512_setzero_ps();
    for (long k = 0; k < K2; ++k) {
        __m512bh bv[J];
        for (int j = 0; j < J; ++j) bv[j] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(b + k * ldb + 16 * j));
        for (int r = 0; r < R; ++r) {
            const __m512bh av = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(a[r * lda + k])));
            for (int j = 0; j < J; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], av, bv[j]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < J; ++j) _mm512_storeu_ps(out + r * ldo + 16 * j, acc[r][j]);
}

template <int R, int J>
inline void gemm_rows_bf16(const uint32_t* a, long lda, const uint32_t* b, long ldb, long M, long K2, float* out,
                           long ldo) {
    for (long r = 0; r < M; r += R) gemm_block_bf16<R, J>(a + r * lda, lda, b, ldb, K2, out + r * ldo, ldo);
}

// M_k = V_k U_k: V [n^2][TB][Ci] bfloat16, U [n^2][Ci/2][Co] pairs, M [n^2][TB][Co] float32 (TB rows: a
// multiple of 6 and 12).
void block_products_bf16(int nn, const uint16_t* V, const uint32_t* U, long Ci, long Co, float* M) {
    const long K2 = Ci / 2;
    for (int k = 0; k < nn; ++k) {
        const uint32_t* a = reinterpret_cast<const uint32_t*>(V + k * TB * Ci);
        const uint32_t* b = U + k * K2 * Co;
        float* out = M + k * TB * Co;
        long j = 0;
        for (; j + 64 <= Co; j += 64) gemm_rows_bf16<6, 4>(a, K2, b + j, Co, TB, K2, out + j, Co);
        for (; j + 32 <= Co; j += 32) gemm_rows_bf16<12, 2>(a, K2, b + j, Co, TB, K2, out + j, Co);
        for (; j < Co; j += 16) gemm_rows_bf16<12, 1>(a, K2, b + j, Co, TB, K2, out + j, Co);
    }
}

// out[R m][16 J n] += sum_tp a[tp][m] . b[tp][n] (both in pairs of rows t = 2 tp, 2 tp + 1).
template <int R, int J>
inline void gemm_tn_block_bf16(const uint32_t* a, long lda, const uint32_t* b, long ldb, long T2, float* out,
                               long ldo) {
    __m512 acc[R][J];
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < J; ++j) acc[r][j] = _mm512_loadu_ps(out + r * ldo + 16 * j);
    for (long t = 0; t < T2; ++t) {
        __m512bh bv[J];
        for (int j = 0; j < J; ++j) bv[j] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(b + t * ldb + 16 * j));
        for (int r = 0; r < R; ++r) {
            const __m512bh av = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(a[t * lda + r])));
            for (int j = 0; j < J; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], av, bv[j]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < J; ++j) _mm512_storeu_ps(out + r * ldo + 16 * j, acc[r][j]);
}

// dU_k += V_k^T dM_k from V [n^2][TB/2][Ci] and dM [n^2][TB/2][Co] in pairs of tiles.
void block_weight_products_bf16(int nn, const uint32_t* V, const uint32_t* dM, long Ci, long Co, float* dU) {
    constexpr long T2 = TB / 2;
    for (int k = 0; k < nn; ++k) {
        const uint32_t* a = V + k * T2 * Ci;
        const uint32_t* b = dM + k * T2 * Co;
        float* out = dU + k * Ci * Co;
        for (long i = 0; i < Ci; i += 4) {
            long j = 0;
            for (; j + 64 <= Co; j += 64) gemm_tn_block_bf16<4, 4>(a + i, Ci, b + j, Co, T2, out + i * Co + j, Co);
            for (; j + 32 <= Co; j += 32) gemm_tn_block_bf16<4, 2>(a + i, Ci, b + j, Co, T2, out + i * Co + j, Co);
            for (; j < Co; j += 16) gemm_tn_block_bf16<4, 1>(a + i, Ci, b + j, Co, T2, out + i * Co + j, Co);
        }
    }
}

inline uint32_t bf16_bits(float f) {  // round to nearest even (finite values)
    const uint32_t u = __builtin_bit_cast(uint32_t, f);
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

// x [P][2 Q][C] float32 -> out [P][Q][C] pairs of consecutive rows (q = 2 i, 2 i + 1) per column; C a
// multiple of 16.
void pair_rows(const float* x, long P, long Q, long C, uint32_t* out) {
    static const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                       23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (long p = 0; p < P; ++p)
        for (long q = 0; q < Q; ++q) {
            const float* lo = x + (p * 2 * Q + 2 * q) * C;
            const float* hi = lo + C;
            uint32_t* o = out + (p * Q + q) * C;
            for (long c = 0; c < C; c += 16) {  // [lo 0..15, hi 0..15] -> [lo 0, hi 0, lo 1, hi 1, ...]
                const __m512bh both = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(hi + c), _mm512_loadu_ps(lo + c));
                _mm512_storeu_si512(o + c, _mm512_permutexvar_epi16(interleave, reinterpret_cast<__m512i>(both)));
            }
        }
}
#endif

float* scratch(long floats) {
    return static_cast<float*>(std::aligned_alloc(64, ((floats * sizeof(float) + 63) / 64) * 64));
}

// Each thread accumulates into its own zeroed buffer of size (+ bias_size) floats, work(id, n, acc, bias_acc),
// then the buffers are summed into out (and bias_out, when not null).
template <class Work>
void reduce_over_threads(long size, long bias_size, float* out, float* bias_out, Work work) {
    const int threads = omp_get_max_threads();
    std::vector<float*> partial(threads, nullptr);
    const long total = size + (bias_out ? bias_size : 0);
#pragma omp parallel num_threads(threads)
    {
        const int id = omp_get_thread_num(), n = omp_get_num_threads();
        float* acc = scratch(total);
        std::memset(acc, 0, sizeof(float) * total);
        partial[id] = acc;
        work(id, n, acc, bias_out ? acc + size : nullptr);
#pragma omp barrier
#pragma omp for schedule(static)
        for (long i = 0; i < total; ++i) {
            float v = 0;
            for (int p = 0; p < n; ++p) v += partial[p][i];
            if (i < size) out[i] = v; else bias_out[i - size] = v;
        }
    }
    for (float* p : partial) std::free(p);
}

// One block's 16 (or 36) products: float32, or bfloat16 pairs (T = uint16_t) where the CPU has AVX512-BF16.
inline void products(int nn, const float* V, const void* U, long Ci, long Co, float* M) {
    block_products(nn, V, static_cast<const float*>(U), Ci, Co, M);
}
#ifdef __AVX512BF16__
inline void products(int nn, const uint16_t* V, const void* U, long Ci, long Co, float* M) {
    block_products_bf16(nn, V, static_cast<const uint32_t*>(U), Ci, Co, M);
}
#endif

// y = conv3x3(x) + bias for x, y of element type T (float or bfloat16 bits); U from winograd_filter (float32)
// or its bfloat16 packing.
template <int m, class T>
void winograd_forward(const T* x, const void* U, const float* bias, T* y, long N, long H, long W, long Ci, long Co) {
    constexpr int nn = Wino<m>::n * Wino<m>::n;
    const Geometry<m> g(N, H, W);
    const long blocks = (g.tiles + TB - 1) / TB;
#pragma omp parallel
    {
        T* V = reinterpret_cast<T*>(scratch((nn * TB * Ci * sizeof(T) + 3) / 4));
        float* M = scratch(nn * TB * Co);
#pragma omp for schedule(static)
        for (long blk = 0; blk < blocks; ++blk) {
            const long t0 = blk * TB;
            const int count = static_cast<int>(std::min<long>(TB, g.tiles - t0));
            input_transform<m>(x, g, Ci, t0, count, V);
            products(nn, V, U, Ci, Co, M);
            output_transform<m>(M, bias, g, Co, t0, count, y);
        }
        std::free(V);
        std::free(M);
    }
}

// dU = sum over tiles of V^T dM (float32) and db = sum of dy for x, dy of element type T. In bfloat16 the
// transformed blocks are rounded and paired along the tiles for the AVX512-BF16 products.
template <int m, class T>
void winograd_weight_grad(const T* x, const T* dy, float* dU, float* db, long N, long H, long W, long Ci, long Co) {
    constexpr int nn = Wino<m>::n * Wino<m>::n;
    constexpr bool bf16 = !std::is_same_v<T, float>;
    const Geometry<m> g(N, H, W);
    const long blocks = (g.tiles + TB - 1) / TB;
    reduce_over_threads(nn * Ci * Co, Co, dU, db, [&](int id, int n, float* acc, float* bias_acc) {
        float* V = scratch(nn * TB * Ci);
        float* dM = scratch(nn * TB * Co);
        uint32_t* Vp = bf16 ? reinterpret_cast<uint32_t*>(scratch(nn * TB / 2 * Ci)) : nullptr;
        uint32_t* dMp = bf16 ? reinterpret_cast<uint32_t*>(scratch(nn * TB / 2 * Co)) : nullptr;
        for (long blk = blocks * id / n, hi = blocks * (id + 1) / n; blk < hi; ++blk) {
            const long t0 = blk * TB;
            const int count = static_cast<int>(std::min<long>(TB, g.tiles - t0));
            input_transform<m>(x, g, Ci, t0, count, V);
            grad_transform<m>(dy, g, Co, t0, count, dM);
            if constexpr (bf16) {
#ifdef __AVX512BF16__
                pair_rows(V, nn, TB / 2, Ci, Vp);
                pair_rows(dM, nn, TB / 2, Co, dMp);
                block_weight_products_bf16(nn, Vp, dMp, Ci, Co, acc);
#endif
            } else {
                block_weight_products(nn, V, dM, Ci, Co, acc);
            }
        }
        for (void* p : {static_cast<void*>(V), static_cast<void*>(dM), static_cast<void*>(Vp), static_cast<void*>(dMp)})
            std::free(p);
        if (bias_acc) {
            const long rows = N * H * W;
            add_rows(dy + rows * id / n * Co, rows * (id + 1) / n - rows * id / n, Co, bias_acc);
        }
    });
}

// U = G g G^T (n x n) for a filter w [Co, Ci, 3, 3] with element strides s: U [n^2, Ci, Co]; with flip, the
// filter of the input gradient (g'[ci][co] = w[co][ci] rotated by 180 degrees): U [n^2, Co, Ci].
template <int m>
void winograd_filter(const float* w, long s0, long s1, long s2, long s3, long Co, long Ci, int flip, float* U) {
    using T = Wino<m>;
    constexpr int n = T::n;
#pragma omp parallel for schedule(static)
    for (long o = 0; o < Co; ++o)
        for (long i = 0; i < Ci; ++i) {
            float g[3][3], t[n][3];
            for (int a = 0; a < 3; ++a)
                for (int b = 0; b < 3; ++b)
                    g[a][b] = flip ? w[o * s0 + i * s1 + (2 - a) * s2 + (2 - b) * s3] : w[o * s0 + i * s1 + a * s2 + b * s3];
            for (int a = 0; a < n; ++a)
                for (int b = 0; b < 3; ++b) t[a][b] = T::G[a][0] * g[0][b] + T::G[a][1] * g[1][b] + T::G[a][2] * g[2][b];
            for (int a = 0; a < n; ++a)
                for (int b = 0; b < n; ++b) {
                    const float u = t[a][0] * T::G[b][0] + t[a][1] * T::G[b][1] + t[a][2] * T::G[b][2];
                    U[(a * n + b) * Ci * Co + (flip ? o * Ci + i : i * Co + o)] = u;
                }
        }
}

// dw = G^T dU G: dU [n^2, Ci, Co] to the filter gradient dw [Co, Ci, 3, 3] with element strides s.
template <int m>
void winograd_filter_grad(const float* dU, float* dw, long s0, long s1, long s2, long s3, long Co, long Ci) {
    using T = Wino<m>;
    constexpr int n = T::n;
#pragma omp parallel for schedule(static)
    for (long o = 0; o < Co; ++o)
        for (long i = 0; i < Ci; ++i) {
            float t[3][n];
            for (int a = 0; a < 3; ++a)
                for (int b = 0; b < n; ++b) {
                    float v = 0;
                    for (int k = 0; k < n; ++k) v += T::G[k][a] * dU[(k * n + b) * Ci * Co + i * Co + o];
                    t[a][b] = v;
                }
            for (int a = 0; a < 3; ++a)
                for (int b = 0; b < 3; ++b) {
                    float v = 0;
                    for (int k = 0; k < n; ++k) v += t[a][k] * T::G[k][b];
                    dw[o * s0 + i * s1 + a * s2 + b * s3] = v;
                }
        }
}

}  // namespace

extern "C" {

// y [N, H, W, Co] = conv3x3(x [N, H, W, Ci], U [n^2, Ci, Co]) + bias [Co] (bias may be null), with
// F(tile x tile, 3 x 3), tile 2 or 4.
int kuosan_winograd_forward(int tile, const float* x, const float* U, const float* bias, float* y, long N, long H,
                            long W, long Ci, long Co) {
    if (Ci % 16 || Co % 16 || (tile != 2 && tile != 4)) return 1;
    (tile == 2 ? winograd_forward<2, float> : winograd_forward<4, float>)(x, U, bias, y, N, H, W, Ci, Co);
    return 0;
}

// dU [n^2, Ci, Co] = sum over tiles of V^T dM for x [N, H, W, Ci] and dy [N, H, W, Co]; db [Co] = sum of dy
// (skipped when db is null).
int kuosan_winograd_weight_grad(int tile, const float* x, const float* dy, float* dU, float* db, long N, long H,
                                long W, long Ci, long Co) {
    if (Ci % 16 || Co % 16 || (tile != 2 && tile != 4)) return 1;
    (tile == 2 ? winograd_weight_grad<2, float> : winograd_weight_grad<4, float>)(x, dy, dU, db, N, H, W, Ci, Co);
    return 0;
}

int kuosan_winograd_filter(int tile, const float* w, long s0, long s1, long s2, long s3, long Co, long Ci, int flip,
                           float* U) {
    if (tile != 2 && tile != 4) return 1;
    (tile == 2 ? winograd_filter<2> : winograd_filter<4>)(w, s0, s1, s2, s3, Co, Ci, flip, U);
    return 0;
}

int kuosan_winograd_filter_grad(int tile, const float* dU, float* dw, long s0, long s1, long s2, long s3, long Co,
                                long Ci) {
    if (tile != 2 && tile != 4) return 1;
    (tile == 2 ? winograd_filter_grad<2> : winograd_filter_grad<4>)(dU, dw, s0, s1, s2, s3, Co, Ci);
    return 0;
}

// y [rows, Co] = x [rows, Ci] wt [Ci, Co] (+ bias): a 1x1 convolution of channels_last tensors (and, with
// wt = the weight [Co, Ci] itself, its input gradient). oneDNN's channels_last 1x1 convolutions ran at
// 100-400 GFLOP/s on the benchmark's shapes (their backward slowest).
int kuosan_conv1x1_forward(const float* x, const float* wt, const float* bias, float* y, long rows, long Ci,
                           long Co) {
    if (Co % 16) return 1;
    constexpr long RB = 96;  // rows per task: a multiple of the kernels' 6 and 12
    const long blocks = (rows + RB - 1) / RB;
#pragma omp parallel for schedule(static)
    for (long blk = 0; blk < blocks; ++blk) {
        const long r0 = blk * RB, count = std::min(RB, rows - r0);
        gemm_nn(x + r0 * Ci, Ci, wt, Co, count, Ci, Co, y + r0 * Co, Co, bias);
    }
    return 0;
}

// dwt [Ci, Co] = x^T dy and db [Co] = sum of dy rows (skipped when null) for the 1x1 convolution above.
int kuosan_conv1x1_weight_grad(const float* x, const float* dy, float* dwt, float* db, long rows, long Ci, long Co) {
    if (Ci % 4 || Co % 16) return 1;
    reduce_over_threads(Ci * Co, Co, dwt, db, [&](int id, int n, float* acc, float* bias_acc) {
        constexpr long T = 128;
        const long lo = rows * id / n, hi = rows * (id + 1) / n;
        for (long r0 = lo; r0 < hi; r0 += T) {
            const long count = std::min(T, hi - r0);
            gemm_tn(x + r0 * Ci, Ci, dy + r0 * Co, Co, count, Ci, Co, acc, Co);
            if (bias_acc) add_rows(dy + r0 * Co, count, Co, bias_acc);
        }
    });
    return 0;
}


// Whether this build has a register blocking of its own (AVX512: 32 registers of 16 floats; AVX2 with FMA:
// 16 of 8). Elsewhere (SSE only, other architectures) the code computes correctly through the compiler's
// generic vectors, unmeasured against torch's convolutions, so the caller keeps torch's there.
int kuosan_conv_kernels_native() {
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
    return 1;
#else
    return 0;
#endif
}

// The same in bfloat16 (AVX512-BF16 CPUs): x, y and dy bfloat16, products in bfloat16 pairs with float32
// sums, bias, dU and db float32; the filter packed by kuosan_winograd_filter_bf16 ([n^2][K/2][N] pairs).
int kuosan_winograd_bf16_supported() {
#ifdef __AVX512BF16__
    return 1;
#else
    return 0;
#endif
}

#ifdef __AVX512BF16__
int kuosan_winograd_filter_bf16(int tile, const float* w, long s0, long s1, long s2, long s3, long Co, long Ci,
                                int flip, uint32_t* U) {
    if (tile != 2 && tile != 4) return 1;
    const int nn = (tile + 2) * (tile + 2);
    const long K = flip ? Co : Ci, Nc = flip ? Ci : Co;
    float* full = scratch(nn * K * Nc);
    (tile == 2 ? winograd_filter<2> : winograd_filter<4>)(w, s0, s1, s2, s3, Co, Ci, flip, full);
    pair_rows(full, nn, K / 2, Nc, U);
    std::free(full);
    return 0;
}

int kuosan_winograd_forward_bf16(int tile, const uint16_t* x, const uint32_t* U, const float* bias, uint16_t* y,
                                 long N, long H, long W, long Ci, long Co) {
    if (Ci % 16 || Co % 16 || (tile != 2 && tile != 4)) return 1;
    (tile == 2 ? winograd_forward<2, uint16_t> : winograd_forward<4, uint16_t>)(x, U, bias, y, N, H, W, Ci, Co);
    return 0;
}

int kuosan_winograd_weight_grad_bf16(int tile, const uint16_t* x, const uint16_t* dy, float* dU, float* db, long N,
                                     long H, long W, long Ci, long Co) {
    if (Ci % 16 || Co % 16 || (tile != 2 && tile != 4)) return 1;
    (tile == 2 ? winograd_weight_grad<2, uint16_t> : winograd_weight_grad<4, uint16_t>)(x, dy, dU, db, N, H, W, Ci, Co);
    return 0;
}
#endif

}  // extern "C"
