// M40_HD marks functions shared by host code and CUDA kernels.
#pragma once

#ifndef M40_HD
#ifdef __CUDACC__
#define M40_HD __host__ __device__
#else
#define M40_HD
#endif
#endif
