# reference.cmake: the engine against the float64 PyTorch reference (tools/ropepp_ref), label `reference`.
#
#   reference_self                 checks of the reference itself (tests/test_reference_self.py)
#   reference_compare_logits_self  compare_logits.py against a fake engine (tests/e2e/test_compare_logits.py)
#   reference_hf_compare           tools/bench/hf_compare.py on tiny CPU checkpoints (tests/test_hf_compare.py)
#   reference_gen_<name>           fixture: writes the checkpoint ${CMAKE_BINARY_DIR}/fixtures/<name>
#   reference_compare_<name>       `ropepp score` logits vs the reference, per-row relative error <= tol
#
#   ctest --test-dir build -L reference            (all)     ctest --test-dir build -R reference_compare_ec
#
# Sequences are 67+ tokens (KV blocks are 16), long ones (300/520) go deep into the rope table with θ,
# PI and YaRN. Every checkpoint is compared at tol 1e-5: the engine computes in fp32 from exact weights
# (bf16 weights are exact in fp32 too); PyTorch's own fp32 run is ~3e-6 from fp64 on the 376M shapes.

set(ROPEPP_FIXTURE_DIR ${CMAKE_BINARY_DIR}/fixtures)
set(_ref_tools ${CMAKE_SOURCE_DIR}/tools)
set(_ref_e2e ${CMAKE_SOURCE_DIR}/tests/e2e)

add_test(NAME reference_self COMMAND ${ROPEPP_PYTHON} ${CMAKE_SOURCE_DIR}/tests/test_reference_self.py)
set_tests_properties(reference_self PROPERTIES LABELS reference TIMEOUT 300)
add_test(NAME reference_compare_logits_self COMMAND ${ROPEPP_PYTHON} ${_ref_e2e}/test_compare_logits.py)
set_tests_properties(reference_compare_logits_self PROPERTIES LABELS reference TIMEOUT 600)
add_test(NAME reference_hf_compare COMMAND ${ROPEPP_PYTHON} ${CMAKE_SOURCE_DIR}/tests/test_hf_compare.py)
set_tests_properties(reference_hf_compare PROPERTIES LABELS reference TIMEOUT 300)

# name | tokens | extra compare_logits args (or -) | gen_checkpoint args
set(ROPEPP_REFERENCE_CHECKPOINTS
  "rope_f32|67|-|--preset tiny --mode rope --dtype f32"
  "eh_f32|67|-|--preset tiny --mode eh --dtype f32"
  "ec_f32|67|-|--preset tiny --mode ec --dtype f32"
  "rope_norc_bf16|67|-|--preset tiny --mode rope --no-rope-config --dtype bf16"
  "eh_norc_tied_bf16|67|-|--preset tiny --mode eh --no-rope-config --tied --dtype bf16"
  "ec_norc_tied_f32|67|-|--preset tiny --mode ec --no-rope-config --tied --dtype f32"
  "ec_norc_tied_f32_flag|67|--mode ec|--preset tiny --mode ec --no-rope-config --tied --dtype f32"
  "eh_tied_f32|67|-|--preset tiny --mode eh --tied --dtype f32"
  "eh_gqa4_f32|67|-|--preset tiny --mode eh --heads 8 --kv-heads 2 --head-dim 8 --dtype f32"
  "ec_theta500k_f32|300|-|--preset tiny --mode ec --theta 500000 --dtype f32"
  "eh_pi4_f32|300|-|--preset tiny --mode eh --pi-factor 4 --dtype f32"
  "rope_norc_pi4_f32|300|-|--preset tiny --mode rope --no-rope-config --pi-factor 4 --dtype f32"
  "ec_yarn8_bf16|520|-|--preset tiny --mode ec --yarn-factor 8 --theta 500000 --dtype bf16"
  "eh_yarn8_f32|300|-|--preset tiny --mode eh --yarn-factor 8 --dtype f32"
  "ec_shards2_bf16|67|-|--preset tiny --mode ec --shards 2 --dtype bf16"
  "rope_shards2_tied_f32|67|-|--preset tiny --mode rope --shards 2 --tied --dtype f32"
  "ec_376m_bf16|8|-|--preset 376m --mode ec --dtype bf16"
)

set(_ref_seed 0)
foreach(entry ${ROPEPP_REFERENCE_CHECKPOINTS})
  string(REPLACE "|" ";" parts "${entry}")
  list(GET parts 0 name)
  list(GET parts 1 tokens)
  list(GET parts 2 cmp_args)
  list(GET parts 3 gen_args)
  separate_arguments(gen_args UNIX_COMMAND "${gen_args}")
  if(cmp_args STREQUAL "-")
    set(cmp_args "")
  else()
    separate_arguments(cmp_args UNIX_COMMAND "${cmp_args}")
  endif()
  math(EXPR _ref_seed "${_ref_seed} + 1")
  set(dir ${ROPEPP_FIXTURE_DIR}/${name})

  add_test(NAME reference_gen_${name}
    COMMAND ${ROPEPP_PYTHON} ${_ref_tools}/gen_checkpoint.py --out ${dir} --seed ${_ref_seed} ${gen_args})
  set_tests_properties(reference_gen_${name} PROPERTIES
    FIXTURES_SETUP ref_${name} LABELS reference TIMEOUT 300)

  add_test(NAME reference_compare_${name}
    COMMAND ${ROPEPP_PYTHON} ${_ref_e2e}/compare_logits.py --model ${dir} --ropepp $<TARGET_FILE:ropepp>
            --random-ids ${tokens} --seed ${_ref_seed} --tol 1e-5 --name ${name} ${cmp_args})
  set_tests_properties(reference_compare_${name} PROPERTIES
    FIXTURES_REQUIRED ref_${name} LABELS reference TIMEOUT 600)
endforeach()
