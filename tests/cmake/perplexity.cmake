# perplexity.cmake: `ropepp perplexity` end to end (label `perplexity`).
#
#   ppl_gen_<fixture>     fixture: a random tiny checkpoint + a 512-piece sentencepiece tokenizer trained on
#                         WikiText (tests/e2e/ppl_reference.py setup) in ${CMAKE_BINARY_DIR}/fixtures/ppl_<fixture>
#   ppl_ref_<case>        the engine on a WikiText-2 slice vs the float64 PyTorch reference running the recipe
#                         loops of HF's guide / the paper's test_ppl.py / llama.cpp, relative 1e-4
#   ppl_bad_input         bad flags and files: non-zero exit and the expected message (tests/e2e/ppl_bad_input.py)
#
#   ctest --test-dir build -L perplexity
set(_ppl_wiki ${CMAKE_SOURCE_DIR}/../shared/data/wikitext-2-raw/wiki.test.raw)
set(_ppl_script ${CMAKE_SOURCE_DIR}/tests/e2e/ppl_reference.py)

# fixture | gen args
set(ROPEPP_PPL_FIXTURES
  "ec|--mode ec --dtype f32 --seed 11"
  "eh|--mode eh --dtype bf16 --seed 12"
)
foreach(entry ${ROPEPP_PPL_FIXTURES})
  string(REPLACE "|" ";" parts "${entry}")
  list(GET parts 0 name)
  list(GET parts 1 args)
  separate_arguments(args UNIX_COMMAND "${args}")
  add_test(NAME ppl_gen_${name}
    COMMAND ${ROPEPP_PYTHON} ${_ppl_script} setup --out ${CMAKE_BINARY_DIR}/fixtures/ppl_${name} --wiki ${_ppl_wiki} ${args})
  set_tests_properties(ppl_gen_${name} PROPERTIES FIXTURES_SETUP ppl_${name} LABELS perplexity TIMEOUT 300)
endforeach()

# case | fixture | check args
set(ROPEPP_PPL_CASES
  # many windows, tokens not a multiple of the stride, the paper formula, windows split over calls of -b 300
  "sliding_w256_s64|ec|--chars 4000 --window 256 --stride 64 --paper-formula --engine-args=--batch-size=300"
  # several windows run as sequences of one batch
  "sliding_w64_s16_parallel|ec|--chars 1200 --window 64 --stride 16 --engine-args=--parallel=5"
  # window % stride != 0: the paper formula needs extra windows
  "sliding_w100_s30_paper|ec|--chars 1500 --window 100 --stride 30 --paper-formula"
  # the defaults (window 4096, stride 512) over ~5,500 tokens: 4 windows
  "sliding_default|eh|--chars 13500 --paper-formula"
  # text shorter than one window
  "sliding_short|eh|--chars 300"
  # llama.cpp's chunks
  "chunk_128|ec|--chars 3000 --chunk 128"
)
foreach(entry ${ROPEPP_PPL_CASES})
  string(REPLACE "|" ";" parts "${entry}")
  list(GET parts 0 name)
  list(GET parts 1 fixture)
  list(GET parts 2 args)
  separate_arguments(args UNIX_COMMAND "${args}")
  add_test(NAME ppl_ref_${name}
    COMMAND ${ROPEPP_PYTHON} ${_ppl_script} check --model ${CMAKE_BINARY_DIR}/fixtures/ppl_${fixture}
            --ropepp $<TARGET_FILE:ropepp> --wiki ${_ppl_wiki} --name ${name} ${args})
  set_tests_properties(ppl_ref_${name} PROPERTIES FIXTURES_REQUIRED ppl_${fixture} LABELS perplexity TIMEOUT 1200)
endforeach()

add_test(NAME ppl_bad_input
  COMMAND ${ROPEPP_PYTHON} ${CMAKE_SOURCE_DIR}/tests/e2e/ppl_bad_input.py --ropepp $<TARGET_FILE:ropepp>
          --model ${CMAKE_BINARY_DIR}/fixtures/ppl_ec)
set_tests_properties(ppl_bad_input PROPERTIES FIXTURES_REQUIRED ppl_ec LABELS perplexity TIMEOUT 300)
