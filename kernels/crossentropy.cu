// Cross-entropy fused with softmax over the padded vocabulary (CPU twin:
// src/backend/cpu/kernels/loss.rs). logits [N, Vp] fp32, targets [N] int32, losses [N].
//   loss_n = logsumexp(z[0..V]) - z[y_n]   (padded columns V..Vp excluded)
//   want_grad: z <- grad_scale * (softmax(z) - onehot(y)) on real columns, 0 on padded ones.
// One block per row; blockDim.x a multiple of 32, at most 1024. Sums: f32 per thread,
// combined in f64 by a fixed-order warp/block tree (deterministic).

// -inf without <math.h> (NVRTC has no INFINITY macro).
#define NEG_INF __int_as_float(0xff800000)

__device__ float block_max(float v, float* sh) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float r = NEG_INF;
    for (int i = 0; i < warps; i++) r = fmaxf(r, sh[i]);
    __syncthreads();
    return r;
}

__device__ double block_sum(double v, double* sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    double r = 0.0;
    for (int i = 0; i < warps; i++) r += sh[i];
    __syncthreads();
    return r;
}

extern "C" __global__ void softmax_xent(float* logits, float* losses, const int* targets, int N,
                                        int Vp, int V, float grad_scale, int want_grad) {
    __shared__ float shf[32];
    __shared__ double shd[32];
    int row = blockIdx.x;
    if (row >= N) return;
    float* z = logits + (long)row * Vp;
    int y = targets[row];
    bool valid = y >= 0 && y < V;
    float zy = valid ? z[y] : 0.0f;
    float m = NEG_INF;
    for (int s = threadIdx.x; s < V; s += blockDim.x) m = fmaxf(m, z[s]);
    m = block_max(m, shf);
    float part = 0.0f;
    for (int s = threadIdx.x; s < V; s += blockDim.x) part += expf(z[s] - m);
    double sum = block_sum((double)part, shd);
    if (threadIdx.x == 0) {
        losses[row] = valid ? (float)((double)m + log(sum) - (double)zy) : __int_as_float(0x7fc00000);
    }
    if (want_grad) {
        float k = (float)((double)grad_scale / sum);
        for (int s = threadIdx.x; s < V; s += blockDim.x) {
            float e = expf(z[s] - m) * k;
            if (s == y) e -= grad_scale;
            z[s] = e;
        }
        for (int s = V + threadIdx.x; s < Vp; s += blockDim.x) z[s] = 0.0f;
    }
}
