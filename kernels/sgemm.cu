// Register-tiled FP32 GEMM: C[M,N] = A[M,K] * B[K,N], row-major, any M, N, K.
//
// Each block computes a BM x BN tile of C, stepping through K in slices of BK staged in shared
// memory (A transposed, so the inner loop reads it without bank conflicts; PAD adds one word per
// row against the remaining conflicts). Each thread computes a TM x TN sub-tile in registers.
// The tunable parameters arrive as -D defines from jitune.
#ifndef BM
#define BM 64
#endif
#ifndef BN
#define BN 64
#endif
#ifndef BK
#define BK 8
#endif
#ifndef TM
#define TM 4
#endif
#ifndef TN
#define TN 4
#endif
#ifndef PAD
#define PAD 0
#endif

#define THREADS ((BM / TM) * (BN / TN))

extern "C" __global__ void __launch_bounds__(THREADS)
sgemm(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int M, int N, int K)
{
    __shared__ float As[BK][BM + PAD];
    __shared__ float Bs[BK][BN + PAD];

    const int tid = threadIdx.x;
    const int block_row = blockIdx.y * BM;
    const int block_col = blockIdx.x * BN;
    const int thread_row = tid / (BN / TN);
    const int thread_col = tid % (BN / TN);

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j)
            acc[i][j] = 0.0f;

    float a_reg[TM];
    float b_reg[TN];

    for (int k0 = 0; k0 < K; k0 += BK) {
        // Cooperative, bounds-checked loads of the A and B slices (zero outside the matrix).
        for (int idx = tid; idx < BM * BK; idx += THREADS) {
            const int r = idx / BK;
            const int c = idx % BK;
            const int gr = block_row + r;
            const int gc = k0 + c;
            As[c][r] = (gr < M && gc < K) ? A[(size_t)gr * K + gc] : 0.0f;
        }
        for (int idx = tid; idx < BK * BN; idx += THREADS) {
            const int r = idx / BN;
            const int c = idx % BN;
            const int gr = k0 + r;
            const int gc = block_col + c;
            Bs[r][c] = (gr < K && gc < N) ? B[(size_t)gr * N + gc] : 0.0f;
        }
        __syncthreads();

#pragma unroll
        for (int k = 0; k < BK; ++k) {
#pragma unroll
            for (int i = 0; i < TM; ++i)
                a_reg[i] = As[k][thread_row * TM + i];
#pragma unroll
            for (int j = 0; j < TN; ++j)
                b_reg[j] = Bs[k][thread_col * TN + j];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j)
                    acc[i][j] += a_reg[i] * b_reg[j];
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int r = block_row + thread_row * TM + i;
        if (r >= M)
            continue;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int c = block_col + thread_col * TN + j;
            if (c < N)
                C[(size_t)r * N + c] = acc[i][j];
        }
    }
}
