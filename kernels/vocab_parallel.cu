// Vocab-parallel embedding and cross-entropy pieces of one tensor-parallel rank, on the device
// (CPU twins: src/backend/cpu/kernels/vocab_parallel.rs). This rank holds vocabulary rows v0 .. v0 + Vl;
// of its local logit columns only the first `valid` = min(Vl, V - v0) are real (the rest pad).

// out[i, c] = (row[i] >= 0 ? wte[row[i], c] : 0) + (has_wpe ? wpe[i % T, c] : 0), where row[i]
// is token i's local row (-1 for tokens of other shards). One thread per output element.
extern "C" __global__ void vp_embedding_forward(float* out, const int* row, const float* wte,
                                                const float* wpe, int has_wpe, int N, int T,
                                                int C) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)N * C) return;
    int i = (int)(idx / C);
    int c = (int)(idx % C);
    int r = row[i];
    float x = r >= 0 ? wte[(long)r * C + c] : 0.0f;
    if (has_wpe) x += wpe[(long)(i % T) * C + c];
    out[idx] = x;
}

// Block-wide reductions over blockDim.x (a power of two <= 1024) threads through `sh`.
__device__ float vp_block_max(float x, float* sh) {
    sh[threadIdx.x] = x;
    __syncthreads();
    const int t = threadIdx.x;
    for (int s = blockDim.x >> 1; s > 0; s >>= 1) {
        if (t < s) sh[t] = fmaxf(sh[t], sh[t + s]);
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

__device__ float vp_block_sum(float x, float* sh) {
    sh[threadIdx.x] = x;
    __syncthreads();
    const int t = threadIdx.x;
    for (int s = blockDim.x >> 1; s > 0; s >>= 1) {
        if (t < s) sh[t] += sh[t + s];
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

// stats[i] = (m, s, t): m = max_j z[i, j], s = sum_j exp(z[i, j] - m) over the real columns
// j < valid, t = z[i, y_i - v0] when the target is in this shard, else 0. One block per row.
extern "C" __global__ void vp_xent_partial(const float* z, float* stats, const int* targets,
                                           int N, int Vl, int v0, int valid) {
    __shared__ float sh[1024];
    int i = blockIdx.x;
    if (i >= N) return;
    const float* zr = z + (long)i * Vl;
    float m = -3.402823466e38f;
    for (int j = threadIdx.x; j < valid; j += blockDim.x) m = fmaxf(m, zr[j]);
    m = vp_block_max(m, sh);
    float s = 0.0f;
    for (int j = threadIdx.x; j < valid; j += blockDim.x) s += expf(zr[j] - m);
    s = vp_block_sum(s, sh);
    if (threadIdx.x == 0) {
        int y = targets[i] - v0;
        stats[3L * i] = m;
        stats[3L * i + 1] = s;
        stats[3L * i + 2] = (y >= 0 && y < valid) ? zr[y] : 0.0f;
    }
}

// z[i, j] <- scale * (exp(z[i, j] - M_i) / S_i - [j = y_i - v0]) for j < valid, 0 for padded
// columns; ms[i] = (M_i, 1/S_i). One thread per element.
extern "C" __global__ void vp_xent_grad(float* z, const float* ms, const int* targets, int N,
                                        int Vl, int v0, int valid, float scale) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)N * Vl) return;
    int i = (int)(idx / Vl);
    int j = (int)(idx % Vl);
    if (j >= valid) {
        z[idx] = 0.0f;
        return;
    }
    float g = expf(z[idx] - ms[2L * i]) * (scale * ms[2L * i + 1]);
    if (j == targets[i] - v0) g -= scale;
    z[idx] = g;
}
