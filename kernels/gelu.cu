// tanh-GELU (Hugging Face gelu_new; CPU twin: src/backend/cpu/kernels/mlp.rs).
//   gelu(x)  = 0.5 x (1 + tanh u),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   gelu'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
// One thread per element (grid-stride).

#define GELU_K 0.7978846f
#define GELU_A 0.044715f

extern "C" __global__ void gelu_forward(float* out, const float* x, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x) {
        float xi = x[i];
        float u = GELU_K * (xi + GELU_A * xi * xi * xi);
        out[i] = 0.5f * xi * (1.0f + tanhf(u));
    }
}

// dx = dy * gelu'(x) (overwrites dx, like the CPU twin).
extern "C" __global__ void gelu_backward(float* dx, const float* x, const float* dy, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x) {
        float xi = x[i];
        float u = GELU_K * (xi + GELU_A * xi * xi * xi);
        float th = tanhf(u);
        float sech2 = 1.0f - th * th;
        float grad = 0.5f * (1.0f + th) + 0.5f * xi * sech2 * GELU_K * (1.0f + 3.0f * GELU_A * xi * xi);
        dx[i] = dy[i] * grad;
    }
}
