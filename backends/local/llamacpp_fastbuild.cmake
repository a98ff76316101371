# Passed to llama.cpp's cmake as CMAKE_PROJECT_INCLUDE by `extraction llamacpp install`: the build time goes to
# the HTTP, CLI, chat-template and multimodal layers (common, server, mtmd, httplib: about 2/3 of its CPU-seconds
# on 2 cores), while the time of a request goes to ggml's kernels. So those layers compile at -O0 (and common /
# mtmd with the standard headers precompiled), libllama (graph building, sampling, grammar) at -O1, and ggml as
# llama.cpp sets it (Release, -O3, native). Measured on the 2-core AVX2 EPYC: the same answers token for token,
# no slower, 778 CPU-seconds instead of 1,100 (README, llama.cpp beside vLLM); with the unity builds below
# 667 instead of 876 (user + system, 2026-12-02; 5.8 min wall instead of 7.6 on 2 cores).
# EXTRACTION_LLAMACPP_FULL_OPT=1 leaves it out (everything at Release, cached apart).
if(CMAKE_VERSION VERSION_LESS 3.19)
  message(STATUS "extraction fast build: needs cmake 3.19 (cmake_language DEFER); building at llama.cpp's flags")
elseif(NOT DEFINED _EXTRACTION_FASTBUILD)
  set(_EXTRACTION_FASTBUILD 1)
  function(_extraction_fastbuild)
    foreach(target llama-common mtmd server-context llama-server-impl cpp-httplib)
      if(TARGET ${target})
        set_property(TARGET ${target} APPEND PROPERTY COMPILE_OPTIONS -O0)
      else()
        message(WARNING "extraction fast build: no target ${target} in this llama.cpp; left as it is")
      endif()
    endforeach()
    foreach(target llama-common mtmd)
      if(TARGET ${target})
        target_precompile_headers(${target} PRIVATE
          <vector> <string> <map> <algorithm> <set> <functional> <sstream> <regex> <unordered_map> <memory>
          <filesystem> <thread> <optional> <fstream> <cmath> <stdexcept> <string_view> <mutex>
          <condition_variable> <chrono> <variant>)
      endif()
    endforeach()
    if(TARGET llama)
      set_property(TARGET llama APPEND PROPERTY COMPILE_OPTIONS -O1)
    endif()
    # Unity builds (sources compiled a dozen to a translation unit) where the time is parsing and instantiating
    # the same headers (nlohmann/json, the std library) over and over; the files that do not compile that way
    # (template specialisations after use, macros redefined) stay on their own. libllama's core is left as
    # llama.cpp builds it (its model graphs already are a unity build): as one unit at -O1 it took longer.
    foreach(target llama-common mtmd server-context llama-server-impl)
      if(TARGET ${target})
        set_target_properties(${target} PROPERTIES UNITY_BUILD ON UNITY_BUILD_BATCH_SIZE 12)
      endif()
    endforeach()
    if(TARGET llama-common)
      set_source_files_properties(${CMAKE_SOURCE_DIR}/common/json.cpp TARGET_DIRECTORY llama-common
        PROPERTIES SKIP_UNITY_BUILD_INCLUSION ON)
    endif()
    if(TARGET mtmd)
      file(GLOB _extraction_helpers ${CMAKE_SOURCE_DIR}/tools/mtmd/mtmd-helper*.cpp)
      set_source_files_properties(${_extraction_helpers} TARGET_DIRECTORY mtmd
        PROPERTIES SKIP_UNITY_BUILD_INCLUSION ON)
    endif()
  endfunction()
  # at the end of the top directory, once every target exists
  cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL _extraction_fastbuild)
endif()
