# default_model.cmake: the shipped default model (models/default, EC; and its EH / RoPE siblings
# models/default-eh, models/default-rope when present) end to end against the float64 PyTorch reference,
# label `golden`. Needs ${ROPEPP_PYTHON} with torch + numpy; the tokenizer side uses Python
# `sentencepiece` when installed, else Debian's spm_encode/spm_decode/spm_export_vocab (package `sentencepiece`).
#
#   golden_generate_<dir>          `ropepp generate -p PROMPT -n 32 --temp 0 --json` ids == reference greedy ids
#   golden_ppl_chunk_<dir>         `ropepp perplexity --chunk 512 --json` == reference (mean NLL within 2e-4 nats)
#   golden_ppl_sliding_<dir>       `ropepp perplexity --window 1024 --stride 512 --json` == reference
#
#   ctest --test-dir build -L golden
# The perplexity text is tests/e2e/data/sotu_2007_excerpt.txt (public domain; 2,000 tokens with BOS).
# The models were trained by tools/train/train.py (see docs/DEFAULT_MODEL.md).

set(_golden_e2e ${CMAKE_SOURCE_DIR}/tests/e2e)
foreach(_golden_dir default default-eh default-rope)
  set(_golden_model ${CMAKE_SOURCE_DIR}/models/${_golden_dir})
  if(NOT EXISTS ${_golden_model}/model.safetensors)
    continue()
  endif()
  add_test(NAME golden_generate_${_golden_dir}
    COMMAND ${ROPEPP_PYTHON} ${_golden_e2e}/golden_generate.py --ropepp $<TARGET_FILE:ropepp>
            --model ${_golden_model} -n 32)
  set_tests_properties(golden_generate_${_golden_dir} PROPERTIES LABELS golden TIMEOUT 600)

  add_test(NAME golden_ppl_chunk_${_golden_dir}
    COMMAND ${ROPEPP_PYTHON} ${_golden_e2e}/ppl_vs_reference.py --ropepp $<TARGET_FILE:ropepp>
            --model ${_golden_model} --chunk 512)
  set_tests_properties(golden_ppl_chunk_${_golden_dir} PROPERTIES LABELS golden TIMEOUT 600)

  add_test(NAME golden_ppl_sliding_${_golden_dir}
    COMMAND ${ROPEPP_PYTHON} ${_golden_e2e}/ppl_vs_reference.py --ropepp $<TARGET_FILE:ropepp>
            --model ${_golden_model} --window 1024 --stride 512)
  set_tests_properties(golden_ppl_sliding_${_golden_dir} PROPERTIES LABELS golden TIMEOUT 600)
endforeach()
