// Layer normalisation forward in FP32: for each row r of x[rows, cols] (row-major),
//   mean = sum_j x[r, j] / cols;  var = sum_j (x[r, j] - mean)^2 / cols   (biased, as PyTorch)
//   y[r, j] = (x[r, j] - mean) / sqrt(var + eps) * gamma[j] + beta[j],   eps = 1e-5.
// Correct for any rows >= 1 and cols >= 1.
//
// A row is handled by TPR threads (8 or 16: part of a warp; 32: one warp; 64..1024: several
// warps reducing through shared memory); a block holds RPB rows, so TPR * RPB threads.
// Parameters (-D defines from jitune):
//   TPR      threads per row (power of two, 8..1024)
//   RPB      rows per block
//   VEC      width of the loads and stores (1, 2, 4 floats). Wide accesses need cols % VEC == 0
//            (so every row start r * cols is a multiple of VEC) and aligned x, gamma, beta, y;
//            checked at run time (shapes within a bucket differ), else scalar accesses.
//   UNROLL   loads in flight per thread per loop step
//   ONEPASS  0: two passes, the mean and then the sum of squared deviations from it (exact);
//            1: one pass of shifted sums, sum(d) and sum(d^2) with d = x - x[r, 0], then
//            var = (sum(d^2) - sum(d)^2 / n) / n (the shifted-data algorithm: sound as long as
//            the first element is not far from the mean relative to the spread, as here)
#ifndef TPR
#define TPR 128
#endif
#ifndef RPB
#define RPB 1
#endif
#ifndef VEC
#define VEC 4
#endif
#ifndef UNROLL
#define UNROLL 1
#endif
#ifndef ONEPASS
#define ONEPASS 0
#endif

#define LN_EPS 1e-5f
#define THREADS (TPR * RPB)
// Warps per row (1 when a row is a warp or part of one).
#define WPR ((TPR + 31) / 32)
// Lanes taking part in a shuffle reduction: the row's threads, at most a warp.
#define SHFL_WIDTH (TPR < 32 ? TPR : 32)

template <int V> __device__ __forceinline__ void load_v(const float* __restrict__ p, float* v);
template <> __device__ __forceinline__ void load_v<1>(const float* __restrict__ p, float* v)
{
    v[0] = p[0];
}
template <> __device__ __forceinline__ void load_v<2>(const float* __restrict__ p, float* v)
{
    const float2 t = *reinterpret_cast<const float2*>(p);
    v[0] = t.x;
    v[1] = t.y;
}
template <> __device__ __forceinline__ void load_v<4>(const float* __restrict__ p, float* v)
{
    const float4 t = *reinterpret_cast<const float4*>(p);
    v[0] = t.x;
    v[1] = t.y;
    v[2] = t.z;
    v[3] = t.w;
}

template <int V> __device__ __forceinline__ void store_v(float* __restrict__ p, const float* v);
template <> __device__ __forceinline__ void store_v<1>(float* __restrict__ p, const float* v)
{
    p[0] = v[0];
}
template <> __device__ __forceinline__ void store_v<2>(float* __restrict__ p, const float* v)
{
    *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]);
}
template <> __device__ __forceinline__ void store_v<4>(float* __restrict__ p, const float* v)
{
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}


// Sums over the TPR threads of a row (one reduction, two or one values); every thread of the
// row gets the same result. Every thread of the block must call it (it may synchronise).
// `red` is this row's 2 * WPR shared slots.
__device__ __forceinline__ void row_sum2(float& a, float& b, float* red)
{
#pragma unroll
    for (int o = SHFL_WIDTH / 2; o > 0; o >>= 1) {
        a += __shfl_xor_sync(0xffffffffu, a, o);
        b += __shfl_xor_sync(0xffffffffu, b, o);
    }
#if TPR > 32
    const int warp = (threadIdx.x % TPR) >> 5;
    if ((threadIdx.x & 31) == 0) {
        red[warp] = a;
        red[WPR + warp] = b;
    }
    __syncthreads();
    a = red[0];
    b = red[WPR];
#pragma unroll
    for (int w = 1; w < WPR; ++w) {
        a += red[w];
        b += red[WPR + w];
    }
    __syncthreads();
#endif
}

// One row (n elements; n is a multiple of V, n = 0 for the padding rows of the last block).
// Thread `lane` of the row visits vectors lane, lane + TPR, ... with UNROLL loads in flight.
template <int V>
__device__ __forceinline__ void layernorm_row(const float* __restrict__ xr,
                                              const float* __restrict__ gamma,
                                              const float* __restrict__ beta,
                                              float* __restrict__ yr, int n, int lane, float* red)
{
    const int nv = n / V;
    const float inv_n = n > 0 ? 1.0f / (float)n : 0.0f;
    float mean, var;
#if ONEPASS
    const float shift = n > 0 ? xr[0] : 0.0f;
    float s1 = 0.0f, s2 = 0.0f;
    for (int base = lane; base < nv; base += TPR * UNROLL) {
        float v[UNROLL][V];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = base + u * TPR;
            if (i < nv)
                load_v<V>(xr + (size_t)i * V, v[u]);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = base + u * TPR;
            if (i < nv) {
#pragma unroll
                for (int k = 0; k < V; ++k) {
                    const float d = v[u][k] - shift;
                    s1 += d;
                    s2 = fmaf(d, d, s2);
                }
            }
        }
    }
    row_sum2(s1, s2, red);
    const float dm = s1 * inv_n;
    mean = shift + dm;
    var = fmaxf(fmaf(-dm, s1, s2) * inv_n, 0.0f);
#else
    float s = 0.0f, unused = 0.0f;
    for (int base = lane; base < nv; base += TPR * UNROLL) {
        float v[UNROLL][V];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = base + u * TPR;
            if (i < nv)
                load_v<V>(xr + (size_t)i * V, v[u]);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = base + u * TPR;
            if (i < nv) {
#pragma unroll
                for (int k = 0; k < V; ++k)
                    s += v[u][k];
            }
        }
    }
    row_sum2(s, unused, red);
    mean = s * inv_n;
    float q = 0.0f;
    unused = 0.0f;
    for (int base = lane; base < nv; base += TPR * UNROLL) {
        float v[UNROLL][V];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = base + u * TPR;
            if (i < nv)
                load_v<V>(xr + (size_t)i * V, v[u]);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = base + u * TPR;
            if (i < nv) {
#pragma unroll
                for (int k = 0; k < V; ++k) {
                    const float d = v[u][k] - mean;
                    q = fmaf(d, d, q);
                }
            }
        }
    }
    row_sum2(q, unused, red);
    var = q * inv_n;
#endif
    const float rstd = rsqrtf(var + LN_EPS);
    for (int base = lane; base < nv; base += TPR * UNROLL) {
        float v[UNROLL][V];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = base + u * TPR;
            if (i < nv)
                load_v<V>(xr + (size_t)i * V, v[u]);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = base + u * TPR;
            if (i < nv) {
                float g[V], b[V];
                load_v<V>(gamma + (size_t)i * V, g);
                load_v<V>(beta + (size_t)i * V, b);
#pragma unroll
                for (int k = 0; k < V; ++k)
                    v[u][k] = fmaf((v[u][k] - mean) * rstd, g[k], b[k]);
                store_v<V>(yr + (size_t)i * V, v[u]);
            }
        }
    }
}

#define ALIGNED(p) (((unsigned long long)(p) % (VEC * sizeof(float))) == 0)

extern "C" __global__ void __launch_bounds__(THREADS)
layernorm(const float* __restrict__ x, const float* __restrict__ gamma,
          const float* __restrict__ beta, float* __restrict__ y, int rows, int cols)
{
    __shared__ float red[RPB][2 * WPR];
    const int lane = threadIdx.x % TPR;
    const int r = threadIdx.x / TPR;
    const long long row = (long long)blockIdx.x * RPB + r;
    // Padding rows of the last block take part in the block's barriers with no elements.
    const int n = row < rows ? cols : 0;
    const size_t off = row < rows ? (size_t)row * (size_t)cols : 0;
    // Uniform across the grid, so every thread of a block takes the same branch (barriers).
    const bool wide = VEC > 1 && cols % VEC == 0 && ALIGNED(x) && ALIGNED(gamma) &&
                      ALIGNED(beta) && ALIGNED(y);
    if (wide)
        layernorm_row<VEC>(x + off, gamma, beta, y + off, n, lane, red[r]);
    else
        layernorm_row<1>(x + off, gamma, beta, y + off, n, lane, red[r]);
}
