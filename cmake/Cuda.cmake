# Optional CUDA: detect a toolkit and choose target architectures.
#
# The M40 is sm_52. CUDA 13 dropped Maxwell, Pascal and Volta, so with 13 the
# default list starts at sm_75; with 12.x or older it starts at sm_52. Set
# CMAKE_CUDA_ARCHITECTURES to override, or M40LLM_CUDA=OFF to skip CUDA.
include(CheckLanguage)
option(M40LLM_CUDA "Build the CUDA backend when a toolkit is found" ON)
set(M40LLM_HAVE_CUDA OFF)
if(M40LLM_CUDA)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(M40LLM_HAVE_CUDA ON)
  endif()
endif()

if(M40LLM_HAVE_CUDA)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
    # Ask the compiler for its version before enable_language fixes the list.
    execute_process(COMMAND ${CMAKE_CUDA_COMPILER} --version
                    OUTPUT_VARIABLE _nvcc_out ERROR_QUIET)
    string(REGEX MATCH "release ([0-9]+)\\.([0-9]+)" _m "${_nvcc_out}")
    set(_cuda_major ${CMAKE_MATCH_1})
    if(_cuda_major GREATER_EQUAL 13)
      set(CMAKE_CUDA_ARCHITECTURES "75;80;86;89;90")
      set(_why "CUDA ${_cuda_major} cannot target sm_52..sm_70; the Tesla M40 needs CUDA 12.x or older")
    else()
      set(CMAKE_CUDA_ARCHITECTURES "52;61;70;75;80;86")
      if(_cuda_major GREATER_EQUAL 12)
        list(APPEND CMAKE_CUDA_ARCHITECTURES 89 90)
      endif()
      set(_why "CUDA ${_cuda_major} still targets sm_52 (Tesla M40)")
    endif()
  else()
    set(_why "set by CMAKE_CUDA_ARCHITECTURES")
  endif()
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  enable_language(CUDA)
  message(STATUS "m40llm: CUDA ${CMAKE_CUDA_COMPILER_VERSION}, architectures "
                 "${CMAKE_CUDA_ARCHITECTURES} (${_why})")
else()
  message(STATUS "m40llm: no CUDA toolkit used; building the CPU engine only")
endif()
