# cpu_isa.cmake: the fp64-reference logits comparisons again with each CPU instruction-set path forced
# (ROPEPP_CPU_ISA=scalar|avx2|avx512, see src/cpu_kernels.h), labels `reference` and `cpu_isa`:
#
#   cpu_isa_<isa>_compare_<name>   as reference_compare_<name> (same fixture, seed, tolerance 1e-5)
#
#   ctest --test-dir build -L cpu_isa
#
# A path the CPU cannot run makes the engine fail with "... does not support it": the test is skipped.
# tests/test_cpu_kernels.cpp compares the kernels themselves on every path against the scalar one.
# Registered at the end of tests/ so that reference.cmake's checkpoint list (and seeds) exist.

set(ROPEPP_CPU_ISA_CHECKPOINTS ec_f32 eh_gqa4_f32 rope_norc_bf16 ec_yarn8_bf16 eh_yarn8_f32 ec_376m_bf16)

function(ropepp_register_cpu_isa_tests)
  if(NOT ROPEPP_REFERENCE_CHECKPOINTS)
    return()
  endif()
  set(seed 0)
  foreach(entry ${ROPEPP_REFERENCE_CHECKPOINTS})
    math(EXPR seed "${seed} + 1")  # as in reference.cmake: the entry's position
    string(REPLACE "|" ";" parts "${entry}")
    list(GET parts 0 name)
    list(GET parts 1 tokens)
    list(GET parts 2 cmp_args)
    if(NOT name IN_LIST ROPEPP_CPU_ISA_CHECKPOINTS)
      continue()
    endif()
    if(cmp_args STREQUAL "-")
      set(cmp_args "")
    else()
      separate_arguments(cmp_args UNIX_COMMAND "${cmp_args}")
    endif()
    foreach(isa scalar avx2 avx512)
      set(test cpu_isa_${isa}_compare_${name})
      add_test(NAME ${test}
        COMMAND ${ROPEPP_PYTHON} ${CMAKE_SOURCE_DIR}/tests/e2e/compare_logits.py --model ${ROPEPP_FIXTURE_DIR}/${name}
                --ropepp $<TARGET_FILE:ropepp> --random-ids ${tokens} --seed ${seed} --tol 1e-5
                --name ${name}_${isa} ${cmp_args})
      set_tests_properties(${test} PROPERTIES
        FIXTURES_REQUIRED ref_${name} LABELS "reference;cpu_isa" TIMEOUT 600
        ENVIRONMENT ROPEPP_CPU_ISA=${isa} SKIP_REGULAR_EXPRESSION "does not support it")
    endforeach()
  endforeach()
endfunction()

cmake_language(DEFER DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR} CALL ropepp_register_cpu_isa_tests)
