// Row-wise, numerically stable softmax in FP32: for each row r of x[rows, cols] (row-major),
//   m = max_j x[r, j];  s = sum_j exp(x[r, j] - m);  y[r, j] = exp(x[r, j] - m) / s.
// Correct for any rows >= 1 and cols >= 1.
//
// A row is handled by TPR threads (8 or 16: part of a warp; 32: one warp; 64..1024: several
// warps reducing through shared memory); a block holds RPB rows, so TPR * RPB threads.
// Parameters (-D defines from jitune):
//   TPR     threads per row (power of two, 8..1024)
//   RPB     rows per block
//   VEC     width of the loads and stores (1, 2, 4 floats). Wide accesses need cols % VEC == 0
//           (so every row start r * cols is a multiple of VEC) and aligned x and y; this is
//           checked at run time (shapes within a bucket differ) and otherwise the kernel falls
//           back to scalar accesses.
//   UNROLL  loads in flight per thread per loop step
//   ONLINE  0: three passes (max, sum of exp, normalise); 1: one pass keeping a running max and
//           a rescaled running sum (online softmax), then the normalising pass
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
#ifndef ONLINE
#define ONLINE 0
#endif

#define THREADS (TPR * RPB)
// Warps per row (1 when a row is a warp or part of one).
#define WPR ((TPR + 31) / 32)
// Lanes taking part in a shuffle reduction: the row's threads, at most a warp.
#define SHFL_WIDTH (TPR < 32 ? TPR : 32)

__device__ __forceinline__ float neg_inf() { return __int_as_float((int)0xff800000); }

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

// Online-softmax merge of (m, s) with (m2, s2); exact when either side is empty (m = -inf).
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2)
{
    const float mn = fmaxf(m, m2);
    s = (m == mn ? s : s * expf(m - mn)) + (m2 == mn ? s2 : s2 * expf(m2 - mn));
    m = mn;
}

// Reductions over the TPR threads of a row; every thread of the row gets the same result.
// Every thread of the block must call them together (they may synchronise the block).
// `red` is this row's WPR shared slots (a second array for the pair reduction).
__device__ __forceinline__ float row_max(float v, float* red)
{
#pragma unroll
    for (int o = SHFL_WIDTH / 2; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
#if TPR > 32
    const int warp = (threadIdx.x % TPR) >> 5;
    if ((threadIdx.x & 31) == 0)
        red[warp] = v;
    __syncthreads();
    v = red[0];
#pragma unroll
    for (int w = 1; w < WPR; ++w)
        v = fmaxf(v, red[w]);
    __syncthreads();
#endif
    return v;
}

__device__ __forceinline__ float row_sum(float v, float* red)
{
#pragma unroll
    for (int o = SHFL_WIDTH / 2; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
#if TPR > 32
    const int warp = (threadIdx.x % TPR) >> 5;
    if ((threadIdx.x & 31) == 0)
        red[warp] = v;
    __syncthreads();
    v = red[0];
#pragma unroll
    for (int w = 1; w < WPR; ++w)
        v += red[w];
    __syncthreads();
#endif
    return v;
}

__device__ __forceinline__ void row_merge(float& m, float& s, float* red_m, float* red_s)
{
#pragma unroll
    for (int o = SHFL_WIDTH / 2; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        merge(m, s, m2, s2);
    }
#if TPR > 32
    const int warp = (threadIdx.x % TPR) >> 5;
    if ((threadIdx.x & 31) == 0) {
        red_m[warp] = m;
        red_s[warp] = s;
    }
    __syncthreads();
    m = red_m[0];
    s = red_s[0];
#pragma unroll
    for (int w = 1; w < WPR; ++w)
        merge(m, s, red_m[w], red_s[w]);
    __syncthreads();
#endif
}

// One row (n elements; n is a multiple of V, n = 0 for the padding rows of the last block).
// Thread `lane` of the row visits vectors lane, lane + TPR, ... with UNROLL loads in flight.
template <int V>
__device__ __forceinline__ void softmax_row(const float* __restrict__ xr, float* __restrict__ yr,
                                            int n, int lane, float* red_m, float* red_s)
{
    const int nv = n / V;
    float m = neg_inf();
    float s = 0.0f;
#if ONLINE
    for (int base = lane; base < nv; base += TPR * UNROLL) {
        float v[UNROLL][V];
        float bm = neg_inf();
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = base + u * TPR;
            if (i < nv) {
                load_v<V>(xr + (size_t)i * V, v[u]);
#pragma unroll
                for (int k = 0; k < V; ++k)
                    bm = fmaxf(bm, v[u][k]);
            }
        }
        if (bm > m) {
            s *= expf(m - bm);
            m = bm;
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = base + u * TPR;
            if (i < nv) {
#pragma unroll
                for (int k = 0; k < V; ++k)
                    s += expf(v[u][k] - m);
            }
        }
    }
    row_merge(m, s, red_m, red_s);
#else
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
                    m = fmaxf(m, v[u][k]);
            }
        }
    }
    m = row_max(m, red_m);
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
                    s += expf(v[u][k] - m);
            }
        }
    }
    s = row_sum(s, red_s);
#endif
    const float inv = 1.0f / s;
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
                    v[u][k] = expf(v[u][k] - m) * inv;
                store_v<V>(yr + (size_t)i * V, v[u]);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(THREADS)
softmax(const float* __restrict__ x, float* __restrict__ y, int rows, int cols)
{
    __shared__ float red_m[RPB][WPR];
    __shared__ float red_s[RPB][WPR];
    const int lane = threadIdx.x % TPR;
    const int r = threadIdx.x / TPR;
    const long long row = (long long)blockIdx.x * RPB + r;
    // Padding rows of the last block take part in the block's barriers with no elements.
    const int n = row < rows ? cols : 0;
    const size_t off = row < rows ? (size_t)row * (size_t)cols : 0;
    // Uniform across the grid, so every thread of a block takes the same branch (barriers).
    const bool wide = VEC > 1 && cols % VEC == 0 &&
                      ((unsigned long long)x % (VEC * sizeof(float))) == 0 &&
                      ((unsigned long long)y % (VEC * sizeof(float))) == 0;
    if (wide)
        softmax_row<VEC>(x + off, y + off, n, lane, red_m[r], red_s[r]);
    else
        softmax_row<1>(x + off, y + off, n, lane, red_m[r], red_s[r]);
}
