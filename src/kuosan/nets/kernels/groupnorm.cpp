// Fused GroupNorm + per-sample scale/shift (AdaGN) + SiLU for channels_last tensors, forward and backward.
//
// Layout: x is [B, HW, C] in memory (a channels_last [B, C, H, W] tensor), float32 or bfloat16; statistics,
// parameters and the arithmetic are float32. One sample's activations are processed by one thread from
// start to end, so the second and third passes over them read from that core's cache, not from memory.
//
// Maths (Wu & He 2018, "Group Normalization", eq. 1-4; AdaGN from Improved DDPM, Nichol & Dhariwal 2021):
//   x^ = (x - mu_g) r_g,  z = gamma x^ + beta,  y = silu(z) or z,
//   gamma = w (1 + s),  beta = b (1 + s) + t   (s, t: per-sample scale and shift, [B, C]),
// computed as z = (x - mu_g) a + beta with a = gamma r_g.
// Backward, with g = dL/dz, S1 = sum_hw g and S2c = sum_hw g (x - mu) per channel, n elements per group:
//   dgamma = S2c r,  dbeta = S1,
//   dx = a g + p (x - mu) + q  with  m1 = sum_c gamma S1 / n,  m2 = sum_c gamma dgamma / n,
//   p = -r^2 m2,  q = -r m1.
// Variance: per-channel means first, then per-channel centred sums of squares pooled with the spread of
// the channel means (Chan et al. 1979), which stays accurate when |mean| >> std.
//
// Built at first use by kuosan.nets.kernels (c++ -O3 -march=native -fno-trapping-math -fopenmp), called
// through ctypes; OpenMP resolves to the runtime torch has already loaded, so torch.set_num_threads applies.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

inline float bf16_to_f32(uint16_t h) {
    return __builtin_bit_cast(float, static_cast<uint32_t>(h) << 16);
}

inline uint16_t f32_to_bf16(float f) {  // round to nearest even; NaN stays NaN
    const uint32_t u = __builtin_bit_cast(uint32_t, f);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded);
}

inline float load(const float* p, long i) { return p[i]; }
inline float load(const uint16_t* p, long i) { return bf16_to_f32(p[i]); }
inline void store(float* p, long i, float v) { p[i] = v; }
inline void store(uint16_t* p, long i, float v) { p[i] = f32_to_bf16(v); }

// exp(x) by range reduction and a polynomial (Cephes expf: degree 6, ~1 ulp), written without calls so that
// the compiler vectorises the loops it sits in. Lite = true (bfloat16 outputs, 8 significant bits): degree 4,
// relative error < 5e-5.
template <bool lite = false>
inline float fast_exp(float x) {
    x = std::max(x, -87.0f);
    x = std::min(x, 80.0f);  // e^80 keeps 1 + e^x inside fast_reciprocal's range
    float n = std::floor(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p;
    if (lite) {
        p = 4.1665795894e-2f;
    } else {
        p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
    }
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return p * __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);
}

// 1/d for 1 <= d < 1e38 without a division (the vector divide was half the cost of SiLU): a first guess from the
// float's bits (relative error < 12%), then Newton steps r <- r (2 - d r), each squaring the error: three for
// float32 (~1e-7), two for bfloat16 outputs (< 2e-4).
template <bool lite = false>
inline float fast_reciprocal(float d) {
    float r = __builtin_bit_cast(float, 0x7ef311c7 - __builtin_bit_cast(int32_t, d));
    r = r * (2.0f - d * r);
    if (!lite) r = r * (2.0f - d * r);
    return r * (2.0f - d * r);
}

// Cheaper maths where the result is rounded to bfloat16 anyway.
template <typename T>
constexpr bool lite_math = std::is_same_v<T, uint16_t>;

template <typename T>
inline float sigmoid(float z) {
    return fast_reciprocal<lite_math<T>>(1.0f + fast_exp<lite_math<T>>(-z));
}

// One position's C channels (contiguous in channels_last): the loops the compiler vectorises.
template <typename T>
void row_sum(const T* __restrict x, float* __restrict acc, long C) {
    for (long ch = 0; ch < C; ++ch) acc[ch] += load(x, ch);
}

template <typename T>
void row_centred_squares(const T* __restrict x, const float* __restrict mean, float* __restrict acc, long C) {
    for (long ch = 0; ch < C; ++ch) {
        const float d = load(x, ch) - mean[ch];
        acc[ch] += d * d;
    }
}

template <typename T>
void row_apply(const T* __restrict x, T* __restrict y, const float* __restrict mu, const float* __restrict a,
               const float* __restrict beta, long C) {
    for (long ch = 0; ch < C; ++ch) store(y, ch, (load(x, ch) - mu[ch]) * a[ch] + beta[ch]);
}

template <typename T>
void row_apply_silu(const T* __restrict x, T* __restrict y, const float* __restrict mu, const float* __restrict a,
                    const float* __restrict beta, long C) {
    for (long ch = 0; ch < C; ++ch) {
        const float z = (load(x, ch) - mu[ch]) * a[ch] + beta[ch];
        store(y, ch, z * sigmoid<T>(z));
    }
}

// Per-sample, per-channel coefficients: z = (x - mu) a + beta with a = gamma r (and gamma, for the backward
// pass). Centring before scaling keeps z accurate when |mu| >> std, where the folded a x + (beta - mu a)
// would cancel.
inline void coefficients(long C, long G, long b, const float* w, const float* bias, const float* scale,
                         const float* shift, const float* mean, const float* rstd, float* mu, float* a, float* beta,
                         float* gamma) {
    const long cpg = C / G;
    for (long ch = 0; ch < C; ++ch) {
        const long g = b * G + ch / cpg;
        const float s = scale ? 1.0f + scale[b * C + ch] : 1.0f;
        const float t = shift ? shift[b * C + ch] : 0.0f;
        gamma[ch] = w[ch] * s;
        mu[ch] = mean[g];
        a[ch] = gamma[ch] * rstd[g];
        beta[ch] = bias[ch] * s + t;
    }
}

// CT > 0: the channel count known at compile time, so that the row loops unroll into whole vectors.
template <typename T, long CT>
void forward_sample(const T* x, T* y, long HW, long C, long G, long b, const float* w, const float* bias,
                    const float* scale, const float* shift, float eps, int act, float* mean, float* rstd,
                    float* buf) {
    if (CT > 0) C = CT;
    float* sum = buf;          // [C] each
    float* m2 = buf + C;
    float* mu = buf + 2 * C;
    float* a = buf + 3 * C;
    float* beta = buf + 4 * C;
    float* gamma = buf + 5 * C;
    for (long ch = 0; ch < C; ++ch) sum[ch] = m2[ch] = 0.0f;
    for (long i = 0; i < HW; ++i) row_sum(x + i * C, sum, C);
    for (long ch = 0; ch < C; ++ch) sum[ch] /= static_cast<float>(HW);  // now the channel means
    for (long i = 0; i < HW; ++i) row_centred_squares(x + i * C, sum, m2, C);
    const long cpg = C / G;
    for (long g = 0; g < G; ++g) {
        double mean_g = 0.0, var = 0.0;
        for (long k = 0; k < cpg; ++k) mean_g += sum[g * cpg + k];
        mean_g /= cpg;
        for (long k = 0; k < cpg; ++k) {
            const double dm = sum[g * cpg + k] - mean_g;
            var += m2[g * cpg + k] / HW + dm * dm;
        }
        var /= cpg;
        mean[b * G + g] = static_cast<float>(mean_g);
        rstd[b * G + g] = static_cast<float>(1.0 / std::sqrt(var + eps));
    }
    coefficients(C, G, b, w, bias, scale, shift, mean, rstd, mu, a, beta, gamma);
    for (long i = 0; i < HW; ++i) {
        if (act) row_apply_silu(x + i * C, y + i * C, mu, a, beta, C);
        else row_apply(x + i * C, y + i * C, mu, a, beta, C);
    }
}

// dL/dz from dL/dy: silu'(z) = s (1 + z (1 - s)) with s = sigmoid(z), and 1 - s written as e s (e = exp(-z)):
// 1 - s itself would cancel to a few ulps of garbage for large z, which z then multiplies.
template <bool act, typename T>
inline float grad_z(float gy, float z) {
    if (!act) return gy;
    const float e = fast_exp<lite_math<T>>(-z);
    const float s = fast_reciprocal<lite_math<T>>(1.0f + e);
    return gy * s * (1.0f + z * e * s);
}

// Pass 1 of the backward: S1 = sum g, S2c = sum g (x - mu), and (with SiLU) g itself into gx, so that pass 2
// need not recompute the sigmoid (the most expensive part; in bfloat16 g is rounded there, as autocast's own
// gradients would be).
template <bool act, typename T>
void row_grad_sums(const T* __restrict x, const T* __restrict gy, T* __restrict g_out, const float* __restrict mu,
                   const float* __restrict a, const float* __restrict beta, float* __restrict s1,
                   float* __restrict s2, long C) {
    for (long ch = 0; ch < C; ++ch) {
        const float xc = load(x, ch) - mu[ch];
        const float g = grad_z<act, T>(load(gy, ch), xc * a[ch] + beta[ch]);
        if (act) store(g_out, ch, g);
        s1[ch] += g;
        s2[ch] += g * xc;
    }
}

// Pass 2: dx = a g + p (x - mu) + q, g read from gx (SiLU) or gy (none), written over gx.
template <typename T>
void row_grad_x(const T* __restrict x, const T* g_in, T* gx, const float* __restrict mu, const float* __restrict a,
                const float* __restrict p, const float* __restrict q, long C) {
    for (long ch = 0; ch < C; ++ch)
        store(gx, ch, a[ch] * load(g_in, ch) + p[ch] * (load(x, ch) - mu[ch]) + q[ch]);
}

template <typename T, long CT>
void backward_sample(const T* x, const T* gy, T* gx, long HW, long C, long G, long b, const float* w,
                     const float* bias, const float* scale, const float* shift, const float* mean,
                     const float* rstd, int act, float* s1_out, float* dgamma_out, float* buf) {
    if (CT > 0) C = CT;
    float* s1 = buf;           // [C] each
    float* s2 = buf + C;
    float* mu = buf + 2 * C;
    float* a = buf + 3 * C;
    float* beta = buf + 4 * C;
    float* gamma = buf + 5 * C;
    float* p = buf + 6 * C;    // constant within a group
    float* q = buf + 7 * C;
    coefficients(C, G, b, w, bias, scale, shift, mean, rstd, mu, a, beta, gamma);
    for (long ch = 0; ch < C; ++ch) s1[ch] = s2[ch] = 0.0f;
    for (long i = 0; i < HW; ++i) {
        if (act) row_grad_sums<true>(x + i * C, gy + i * C, gx + i * C, mu, a, beta, s1, s2, C);
        else row_grad_sums<false>(x + i * C, gy + i * C, gx + i * C, mu, a, beta, s1, s2, C);
    }
    // With x^ = (x - mu) r: dgamma = S2c r, m1 = sum_c gamma S1 / n, m2 = sum_c gamma dgamma / n,
    // dx = r (gamma g - m1 - x^ m2) = a g + p (x - mu) + q with p = -r^2 m2, q = -r m1.
    const long cpg = C / G;
    const double n = static_cast<double>(cpg) * HW;
    for (long g = 0; g < G; ++g) {
        const double r = rstd[b * G + g];
        double m1 = 0.0, m2 = 0.0;
        for (long k = 0; k < cpg; ++k) {
            const long ch = g * cpg + k;
            const double dg = s2[ch] * r;
            dgamma_out[b * C + ch] = static_cast<float>(dg);
            s1_out[b * C + ch] = s1[ch];
            m1 += gamma[ch] * static_cast<double>(s1[ch]);
            m2 += gamma[ch] * dg;
        }
        m1 /= n;
        m2 /= n;
        for (long k = 0; k < cpg; ++k) {
            p[g * cpg + k] = static_cast<float>(-r * r * m2);
            q[g * cpg + k] = static_cast<float>(-r * m1);
        }
    }
    for (long i = 0; i < HW; ++i) row_grad_x(x + i * C, act ? gx + i * C : gy + i * C, gx + i * C, mu, a, p, q, C);
}

template <typename T, long CT>
void forward_all(const void* x, void* y, long B, long HW, long C, long G, const float* w, const float* bias,
                 const float* scale, const float* shift, float eps, int act, float* mean, float* rstd) {
    const T* xs = static_cast<const T*>(x);
    T* ys = static_cast<T*>(y);
#pragma omp parallel
    {
        std::vector<float> buf(6 * C);
#pragma omp for schedule(static)
        for (long b = 0; b < B; ++b)
            forward_sample<T, CT>(xs + b * HW * C, ys + b * HW * C, HW, C, G, b, w, bias, scale, shift, eps, act, mean,
                           rstd, buf.data());
    }
}

template <typename T, long CT>
void backward_all(const void* x, const void* gy, void* gx, long B, long HW, long C, long G, const float* w,
                  const float* bias, const float* scale, const float* shift, const float* mean, const float* rstd,
                  int act, float* s1, float* dgamma) {
    const T* xs = static_cast<const T*>(x);
    const T* gys = static_cast<const T*>(gy);
    T* gxs = static_cast<T*>(gx);
#pragma omp parallel
    {
        std::vector<float> buf(8 * C);
#pragma omp for schedule(static)
        for (long b = 0; b < B; ++b)
            backward_sample<T, CT>(xs + b * HW * C, gys + b * HW * C, gxs + b * HW * C, HW, C, G, b, w, bias, scale,
                            shift, mean, rstd, act, s1, dgamma, buf.data());
    }
}

template <typename T>
void scaled_sum(const void* a, const void* b, void* out, long n, float c) {
    const T* as = static_cast<const T*>(a);
    const T* bs = static_cast<const T*>(b);
    T* os = static_cast<T*>(out);
    const long chunk = 8192;
#pragma omp parallel for schedule(static)
    for (long start = 0; start < n; start += chunk) {
        const long len = std::min(chunk, n - start);
        const T* __restrict x = as + start;
        T* __restrict y = os + start;
        if (bs) {
            const T* __restrict z = bs + start;
            for (long i = 0; i < len; ++i) store(y, i, (load(x, i) + load(z, i)) * c);
        } else {
            for (long i = 0; i < len; ++i) store(y, i, load(x, i) * c);
        }
    }
}

// The channel counts of the usual networks get their own unrolled copies; others take the generic loops.
#define KUOSAN_DISPATCH_C(fn, T, C, ...)                   \
    switch (C) {                                           \
        case 32: fn<T, 32>(__VA_ARGS__); break;            \
        case 64: fn<T, 64>(__VA_ARGS__); break;            \
        case 96: fn<T, 96>(__VA_ARGS__); break;            \
        case 128: fn<T, 128>(__VA_ARGS__); break;          \
        case 192: fn<T, 192>(__VA_ARGS__); break;          \
        case 256: fn<T, 256>(__VA_ARGS__); break;          \
        default: fn<T, 0>(__VA_ARGS__); break;             \
    }

}  // namespace

extern "C" {

// dtype: 0 = float32, 1 = bfloat16. scale and shift may be null. mean, rstd: [B, G] outputs.
int kuosan_gn_forward(const void* x, void* y, int dtype, long B, long HW, long C, long G, const float* w,
                      const float* bias, const float* scale, const float* shift, float eps, int act, float* mean,
                      float* rstd) {
    if (G <= 0 || C % G != 0) return 1;
    if (dtype == 0) {
        KUOSAN_DISPATCH_C(forward_all, float, C, x, y, B, HW, C, G, w, bias, scale, shift, eps, act, mean, rstd)
    } else if (dtype == 1) {
        KUOSAN_DISPATCH_C(forward_all, uint16_t, C, x, y, B, HW, C, G, w, bias, scale, shift, eps, act, mean, rstd)
    } else {
        return 2;
    }
    return 0;
}

// s1 (= dL/dbeta) and dgamma: [B, C] outputs; gx has x's dtype and layout.
int kuosan_gn_backward(const void* x, const void* gy, void* gx, int dtype, long B, long HW, long C, long G,
                       const float* w, const float* bias, const float* scale, const float* shift, const float* mean,
                       const float* rstd, int act, float* s1, float* dgamma) {
    if (G <= 0 || C % G != 0) return 1;
    if (dtype == 0) {
        KUOSAN_DISPATCH_C(backward_all, float, C, x, gy, gx, B, HW, C, G, w, bias, scale, shift, mean, rstd, act,
                          s1, dgamma)
    } else if (dtype == 1) {
        KUOSAN_DISPATCH_C(backward_all, uint16_t, C, x, gy, gx, B, HW, C, G, w, bias, scale, shift, mean, rstd,
                          act, s1, dgamma)
    } else {
        return 2;
    }
    return 0;
}

// out = (a + b) c, or a c without b: the scaled residual sum (EDM's skip_scale) and its backward in one pass.
// a, b and out are n elements in the same layout.
int kuosan_scaled_sum(const void* a, const void* b, void* out, int dtype, long n, float c) {
    if (dtype == 0) scaled_sum<float>(a, b, out, n, c);
    else if (dtype == 1) scaled_sum<uint16_t>(a, b, out, n, c);
    else return 2;
    return 0;
}

int kuosan_kernels_version() { return 2; }
}
