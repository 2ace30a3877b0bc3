// Tensor-core GEMM with 16-bit inputs and FP32 accumulation: C[M,N] (f32) = A[M,K] * B[K,N],
// A and B row-major FP16 (default) or BF16 (-DHGEMM_BF16=1), any M, N, K (M = 1 included).
//
// Shared by kernels/hgemm_f16.toml and kernels/hgemm_bf16.toml (they differ only in that define
// and in their argument types). Portable to sm_80+ except split-K, which needs clusters (sm_90).
//
// Structure (the parameters arrive as -D defines from jitune):
// - Each block computes a BM x BN tile of C; its warps each own a WM x WN sub-tile, computed with
//   mma.sync.m16n8k16 (FP32 accumulators in registers), fed by ldmatrix from shared memory
//   (ldmatrix.trans for B, which is stored K-major in global memory).
// - K advances in slices of BK, staged through STAGES shared-memory buffers filled by cp.async
//   (16-byte copies, zero-filled past the matrix edges), so up to STAGES-1 slices are in flight
//   while one is computed. When K or N is not a multiple of 8 (rows not 16-byte aligned) the
//   same pipeline is filled by bounds-checked 2-byte loads instead: slower, never wrong.
// - LAYOUT picks the shared-memory layout: 0 plain rows (ldmatrix bank conflicts: kept in the
//   space on purpose, it is a real option that loses), 1 rows padded by 16 bytes, 2 an XOR
//   swizzle of the 16-byte chunks within each 128-byte line (conflict-free, no padding).
// - GROUP_M: blocks are launched in groups of GROUP_M tile rows, so blocks that run together
//   share A and B tiles in L2.
// - SPLITK > 1: a cluster of SPLITK blocks (along grid z) splits K for one output tile; each
//   block leaves its partial tile in its own shared memory and each reduces a slice of columns
//   over all of them through distributed shared memory. One launch, no workspace, no atomics,
//   and C needs no zeroing. It is what gives M = 1 (decode) shapes enough blocks.

#ifndef BM
#define BM 64
#endif
#ifndef BN
#define BN 128
#endif
#ifndef BK
#define BK 32
#endif
#ifndef WM
#define WM 32
#endif
#ifndef WN
#define WN 64
#endif
#ifndef STAGES
#define STAGES 3
#endif
#ifndef LAYOUT
#define LAYOUT 2
#endif
#ifndef GROUP_M
#define GROUP_M 8
#endif
#ifndef SPLITK
#define SPLITK 1
#endif
#ifndef HGEMM_BF16
#define HGEMM_BF16 0
#endif

#define WARPS_M (BM / WM)
#define WARPS_N (BN / WN)
#define THREADS (WARPS_M * WARPS_N * 32)
#define MI (WM / 16)  // m16 tiles per warp
#define NI (WN / 8)   // n8 tiles per warp
#define PADH (LAYOUT == 1 ? 8 : 0)
#define A_STRIDE (BK + PADH)  // halves per A row in shared memory
#define B_STRIDE (BN + PADH)  // halves per B row
#define A_STAGE_BYTES (BM * A_STRIDE * 2)
#define B_STAGE_BYTES (BK * B_STRIDE * 2)
#define STAGE_BYTES (A_STAGE_BYTES + B_STAGE_BYTES)
#define RED_STRIDE (BN + 4)  // floats per row of the split-K partial tile

#if (BM % WM) || (BN % WN) || (WM % 16) || (WN % 16) || (BK % 16)
#error "tile sizes must divide: BM % WM, BN % WN, and WM, WN, BK multiples of 16"
#endif

typedef unsigned short u16;
typedef unsigned int u32;

// Byte offset of (row, col) in a tile whose rows hold `stride` halves. col is a multiple of 8
// wherever 16-byte chunks are addressed, and the swizzle only permutes whole chunks.
__device__ __forceinline__ u32 tile_off(int row, int col, int stride)
{
    u32 o = (u32)(row * stride + col) * 2u;
#if LAYOUT == 2
    o ^= ((o >> 7) & 7u) << 4;
#endif
    return o;
}

__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool in_bounds)
{
    // src-size 0 reads nothing and zero-fills the 16 bytes.
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(in_bounds ? 16 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(u32* r, u32 addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(u32* r, u32 addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void mma16816(float* c, const u32* a, const u32* b)
{
#if HGEMM_BF16
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
#endif
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Loads the BK-slice `kt` of A and B into stage buffer `sbase`. `vec`: rows are 16-byte aligned
// (K % 8 == 0, N % 8 == 0), so every 16-byte chunk is wholly inside or wholly outside.
__device__ __forceinline__ void load_stage(u32 sbase, const u16* __restrict__ A,
                                           const u16* __restrict__ B, int M, int N, int K,
                                           int bm, int bn, int kt, int tid, bool vec)
{
    const int k0 = kt * BK;
    constexpr int A_CHUNKS = BM * BK / 8;
    constexpr int B_CHUNKS = BK * BN / 8;
#pragma unroll
    for (int i = 0; i < (A_CHUNKS + THREADS - 1) / THREADS; ++i) {
        const int c = tid + i * THREADS;
        if (A_CHUNKS % THREADS == 0 || c < A_CHUNKS) {
            const int row = c / (BK / 8);
            const int col = (c % (BK / 8)) * 8;
            const int gr = bm + row, gc = k0 + col;
            const u32 dst = sbase + tile_off(row, col, A_STRIDE);
            if (vec) {
                const bool in = gr < M && gc < K;
                cp_async16(dst, in ? (const void*)(A + (size_t)gr * K + gc) : (const void*)A, in);
            } else {
                u32 w[4];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const u32 lo = (gr < M && gc + 2 * j < K) ? A[(size_t)gr * K + gc + 2 * j] : 0u;
                    const u32 hi =
                        (gr < M && gc + 2 * j + 1 < K) ? A[(size_t)gr * K + gc + 2 * j + 1] : 0u;
                    w[j] = lo | (hi << 16);
                }
                asm volatile("st.shared.v4.u32 [%0], {%1,%2,%3,%4};\n" ::"r"(dst), "r"(w[0]),
                             "r"(w[1]), "r"(w[2]), "r"(w[3]));
            }
        }
    }
    const u32 bbase = sbase + A_STAGE_BYTES;
#pragma unroll
    for (int i = 0; i < (B_CHUNKS + THREADS - 1) / THREADS; ++i) {
        const int c = tid + i * THREADS;
        if (B_CHUNKS % THREADS == 0 || c < B_CHUNKS) {
            const int row = c / (BN / 8);
            const int col = (c % (BN / 8)) * 8;
            const int gr = k0 + row, gc = bn + col;
            const u32 dst = bbase + tile_off(row, col, B_STRIDE);
            if (vec) {
                const bool in = gr < K && gc < N;
                cp_async16(dst, in ? (const void*)(B + (size_t)gr * N + gc) : (const void*)B, in);
            } else {
                u32 w[4];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const u32 lo = (gr < K && gc + 2 * j < N) ? B[(size_t)gr * N + gc + 2 * j] : 0u;
                    const u32 hi =
                        (gr < K && gc + 2 * j + 1 < N) ? B[(size_t)gr * N + gc + 2 * j + 1] : 0u;
                    w[j] = lo | (hi << 16);
                }
                asm volatile("st.shared.v4.u32 [%0], {%1,%2,%3,%4};\n" ::"r"(dst), "r"(w[0]),
                             "r"(w[1]), "r"(w[2]), "r"(w[3]));
            }
        }
    }
}

#if SPLITK > 1
#define CLUSTER_ATTR __cluster_dims__(1, 1, SPLITK)
#else
#define CLUSTER_ATTR
#endif

extern "C" __global__ void __launch_bounds__(THREADS) CLUSTER_ATTR
hgemm(const u16* __restrict__ A, const u16* __restrict__ B, float* __restrict__ C, int M, int N,
      int K)
{
    extern __shared__ __align__(128) unsigned char smem[];
    const u32 sbase = (u32)__cvta_generic_to_shared(smem);

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int wm = warp / WARPS_N;
    const int wn = warp % WARPS_N;

    // Grouped rasterisation: GROUP_M tile rows at a time, column by column within a group.
    const int tiles_m = (M + BM - 1) / BM;
    const int tiles_n = (N + BN - 1) / BN;
    const int pid = blockIdx.x;
    const int group = GROUP_M * tiles_n;
    const int first_m = (pid / group) * GROUP_M;
    const int gsz = min(tiles_m - first_m, GROUP_M);
    const int tm = first_m + (pid % group) % gsz;
    const int tn = (pid % group) / gsz;
    const int bm = tm * BM;
    const int bn = tn * BN;

    const bool vec = (K % 8 == 0) && (N % 8 == 0) && ((size_t)A % 16 == 0) && ((size_t)B % 16 == 0);

    // This block's share of the K slices.
    const int KT = (K + BK - 1) / BK;
#if SPLITK > 1
    const int per = (KT + SPLITK - 1) / SPLITK;
    const int kt0 = min(KT, (int)blockIdx.z * per);
    const int nk = min(KT, kt0 + per) - kt0;
#else
    const int kt0 = 0;
    const int nk = KT;
#endif

    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r)
                acc[i][j][r] = 0.0f;

    // Prologue: STAGES-1 slices in flight (empty groups keep the group count uniform).
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < nk)
            load_stage(sbase + s * STAGE_BYTES, A, B, M, N, K, bm, bn, kt0 + s, tid, vec);
        cp_async_commit();
    }

    for (int i = 0; i < nk; ++i) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        // The stage refilled here was computed in the previous iteration, which every thread
        // has finished (the barrier above).
        const int pf = i + STAGES - 1;
        if (pf < nk)
            load_stage(sbase + (pf % STAGES) * STAGE_BYTES, A, B, M, N, K, bm, bn, kt0 + pf, tid,
                       vec);
        cp_async_commit();

        const u32 as = sbase + (i % STAGES) * STAGE_BYTES;
        const u32 bs = as + A_STAGE_BYTES;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            u32 af[MI][4];
            u32 bf[NI][2];
#pragma unroll
            for (int mi = 0; mi < MI; ++mi)
                ldmatrix_x4(af[mi],
                            as + tile_off(wm * WM + mi * 16 + (lane & 15), kk + (lane >> 4) * 8,
                                          A_STRIDE));
#pragma unroll
            for (int nj = 0; nj < NI / 2; ++nj) {
                u32 r[4];
                ldmatrix_x4_trans(r, bs + tile_off(kk + (lane & 15),
                                                   wn * WN + nj * 16 + (lane >> 4) * 8, B_STRIDE));
                bf[2 * nj][0] = r[0];
                bf[2 * nj][1] = r[1];
                bf[2 * nj + 1][0] = r[2];
                bf[2 * nj + 1][1] = r[3];
            }
#pragma unroll
            for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                for (int ni = 0; ni < NI; ++ni)
                    mma16816(acc[mi][ni], af[mi], bf[ni]);
        }
    }
    cp_async_wait<0>();

    // Accumulator fragment layout: c0,c1 at (row g, cols 2t, 2t+1), c2,c3 at row g + 8.
    const int g = lane >> 2;
    const int t = lane & 3;

#if SPLITK > 1
    // The pipeline buffers are free once every warp is past its last ldmatrix.
    __syncthreads();
    float* red = (float*)smem;
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) {
            const int r = wm * WM + mi * 16 + g;
            const int c = wn * WN + ni * 8 + 2 * t;
            *(float2*)&red[r * RED_STRIDE + c] = make_float2(acc[mi][ni][0], acc[mi][ni][1]);
            *(float2*)&red[(r + 8) * RED_STRIDE + c] = make_float2(acc[mi][ni][2], acc[mi][ni][3]);
        }
    // Every block of the cluster has written its partial tile (release/acquire across blocks).
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::
                     : "memory");
    {
        // Block z reduces columns [z * BN / SPLITK, (z + 1) * BN / SPLITK) over all partials.
        constexpr int CW = BN / SPLITK;
        constexpr int CHUNKS = BM * CW / 4;
        const int z = blockIdx.z;
        const bool vec_c = (N % 4 == 0) && ((size_t)C % 16 == 0);
        for (int ch = tid; ch < CHUNKS; ch += THREADS) {
            const int r = ch / (CW / 4);
            const int c = z * CW + (ch % (CW / 4)) * 4;
            const int gr = bm + r, gc = bn + c;
            if (gr >= M || gc >= N)
                continue;
            const u32 local = sbase + (u32)(r * RED_STRIDE + c) * 4u;
            float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int q = 0; q < SPLITK; ++q) {
                u32 remote;
                asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n"
                             : "=r"(remote)
                             : "r"(local), "r"(q));
                float4 v;
                asm volatile("ld.shared::cluster.v4.f32 {%0,%1,%2,%3}, [%4];\n"
                             : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                             : "r"(remote));
                s.x += v.x;
                s.y += v.y;
                s.z += v.z;
                s.w += v.w;
            }
            float* out = C + (size_t)gr * N + gc;
            if (vec_c && gc + 3 < N) {
                *(float4*)out = s;
            } else {
                out[0] = s.x;
                if (gc + 1 < N)
                    out[1] = s.y;
                if (gc + 2 < N)
                    out[2] = s.z;
                if (gc + 3 < N)
                    out[3] = s.w;
            }
        }
    }
    // No block may exit (freeing its shared memory) while another still reads it.
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::
                     : "memory");
#else
    const bool vec_c = (N % 2 == 0) && ((size_t)C % 8 == 0);
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) {
            const int c = bn + wn * WN + ni * 8 + 2 * t;
            if (c >= N)
                continue;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int r = bm + wm * WM + mi * 16 + g + 8 * h;
                if (r >= M)
                    continue;
                float* out = C + (size_t)r * N + c;
                if (vec_c) {
                    // c is even and N is even, so c + 1 < N as well.
                    *(float2*)out = make_float2(acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1]);
                } else {
                    out[0] = acc[mi][ni][2 * h];
                    if (c + 1 < N)
                        out[1] = acc[mi][ni][2 * h + 1];
                }
            }
        }
#endif
}
