// Reductions and elementwise helpers (CPU twins: src/optim/clip.rs, add_column_sums in
// src/backend/cpu/matmul.rs). fp32 data, deterministic: fixed grids, fixed-order trees, no
// atomics.

// Rows per bias-gradient partial (= the CPU twin's SUM_CHUNK, so partials round identically).
#define BIAS_ROWS 64

// Sum of a double per thread over the block (blockDim.x a power of two <= 1024), fixed tree.
__device__ double block_sum_f64(double v) {
    __shared__ double sh[1024];
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    return sh[0];
}

// partials[block] = sum of x[i]^2 (in f64) over this block's grid-stride elements.
// The host launches a fixed grid so the result does not depend on the device.
extern "C" __global__ void sum_squares_partial(const float* x, long n, double* partials) {
    double acc = 0.0;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x) {
        double v = (double)x[i];
        acc += v * v;
    }
    double s = block_sum_f64(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// out[0] = sum of partials[0..num_parts]; one block.
extern "C" __global__ void sum_squares_final(const double* partials, int num_parts, double* out) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < num_parts; i += blockDim.x) acc += partials[i];
    double s = block_sum_f64(acc);
    if (threadIdx.x == 0) out[0] = s;
}

// x *= k.
extern "C" __global__ void scale(float* x, long n, float k) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x) {
        x[i] *= k;
    }
}

// y += x.
extern "C" __global__ void add_inplace(float* y, const float* x, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x) {
        y[i] += x[i];
    }
}

// partials[k, j] = sum over rows r in [64k, 64k + 64) of dy[r, j], dy [N, OC].
// Grid (ceil(OC / blockDim.x), ceil(N / 64)); reduce partials [ceil(N/64), OC] into the bias
// gradient with column_reduce (db += sum_rows dy).
extern "C" __global__ void bias_grad_partial(float* partials, const float* dy, int N, int OC) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= OC) return;
    for (int k = blockIdx.y; (long)k * BIAS_ROWS < N; k += gridDim.y) {
        int r0 = k * BIAS_ROWS;
        int r1 = min(r0 + BIAS_ROWS, N);
        float acc = 0.0f;
        for (int r = r0; r < r1; r++) acc += dy[(long)r * OC + j];
        partials[(long)k * OC + j] = acc;
    }
}

// out[j] += partials[0, j] + partials[1, j] + ... (in order); row p starts at p * stride.
extern "C" __global__ void column_reduce(float* out, const float* partials, int num_parts,
                                         int width, int stride) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= width) return;
    float acc = out[j];
    for (int p = 0; p < num_parts; p++) acc += partials[(long)p * stride + j];
    out[j] = acc;
}
