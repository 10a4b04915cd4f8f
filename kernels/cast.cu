// fp32 <-> bf16 casts (round to nearest even), one thread per element (grid-stride).
#include <cuda_bf16.h>

extern "C" __global__ void f32_to_bf16(__nv_bfloat16* out, const float* in, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x) {
        out[i] = __float2bfloat16_rn(in[i]);
    }
}

extern "C" __global__ void bf16_to_f32(float* out, const __nv_bfloat16* in, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x) {
        out[i] = __bfloat162float(in[i]);
    }
}
