// AdamW (Loshchilov & Hutter 2019, Algorithm 2, as torch.optim.AdamW computes it) over many float32
// tensors in one parallel pass: each element is read and written once, where torch's fused CPU kernel took
// 11.5 ms for the 1.7 M parameters of the benchmark UNet (about 4x its memory time) and its for-loop
// version 19 ms. Per element, with step size a = lr / (1 - beta1^t) and c2 = sqrt(1 - beta2^t):
//   p <- p (1 - lr wd);  m <- m + (1 - beta1)(g - m);  v <- beta2 v + (1 - beta2) g^2;
//   p <- p - a m / (sqrt(v) / c2 + eps).
// Parameters, gradients and moments of one tensor share a layout (the caller checks), so the update runs
// over flat memory. Built with groupnorm.cpp into one library by kuosan.nets.kernels.

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

void adamw_range(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v, long n,
                 float decay, float beta1, float beta2, float step_size, float c2, float eps) {
    const float one_b1 = 1.0f - beta1, one_b2 = 1.0f - beta2, inv_c2 = 1.0f / c2;
    for (long i = 0; i < n; ++i) {
        const float gi = g[i];
        const float mi = m[i] + one_b1 * (gi - m[i]);
        const float vi = beta2 * v[i] + one_b2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step_size * mi / (std::sqrt(vi) * inv_c2 + eps);
    }
}

}  // namespace

extern "C" {

// params, grads, exp_avgs, exp_avg_sqs: arrays of n_tensors pointers; sizes: elements of each.
int kuosan_adamw(long n_tensors, float** params, float** grads, float** exp_avgs, float** exp_avg_sqs,
                 const long* sizes, float lr, float beta1, float beta2, float eps, float weight_decay,
                 float bias_correction1, float bias_correction2_sqrt) {
    const long chunk = 16384;
    std::vector<long> tensor_of, start_of;  // work items: (tensor, offset) pieces of at most `chunk`
    for (long t = 0; t < n_tensors; ++t)
        for (long s = 0; s < sizes[t]; s += chunk) {
            tensor_of.push_back(t);
            start_of.push_back(s);
        }
    const float decay = 1.0f - lr * weight_decay, step_size = lr / bias_correction1;
    const long items = static_cast<long>(tensor_of.size());
#pragma omp parallel for schedule(static)
    for (long k = 0; k < items; ++k) {
        const long t = tensor_of[k], s = start_of[k], n = std::min(chunk, sizes[t] - s);
        adamw_range(params[t] + s, grads[t] + s, exp_avgs[t] + s, exp_avg_sqs[t] + s, n, decay, beta1, beta2,
                    step_size, bias_correction2_sqrt, eps);
    }
    return 0;
}
}
