# hardening.cmake: hostile and broken inputs through the ropepp binary, and a long chat session (label
# `hardening`; see docs/RELIABILITY.md). The GoogleTest parts (test_hardening.cpp, test_long_session.cpp)
# are ordinary unit tests. tools/ci_hardening.sh runs all of it under ASan + UBSan, then the fuzzers.
#
#   hardening_bad_inputs   tests/e2e/bad_inputs.py: ~250 broken checkpoints / configs / tokenizers / prompts /
#                          flags; each must exit 1 with an "error:" line, no crash, no sanitizer report, no hang
#   hardening_long_chat    tests/e2e/long_chat.py: 1,000 piped turns of `ropepp chat -c 192`, then /reset; status
#                          0, the context overflowed repeatedly, KV blocks / backend bytes / resident memory back
#                          to the baseline after /reset
# (Release, 2 cores: about 15 s and 5 s; under ASan + UBSan about 1 min each.)
#
#   ctest --test-dir build -L hardening
add_test(NAME hardening_bad_inputs
  COMMAND ${ROPEPP_PYTHON} ${CMAKE_SOURCE_DIR}/tests/e2e/bad_inputs.py --ropepp $<TARGET_FILE:ropepp>
          --work ${CMAKE_BINARY_DIR}/hardening/bad_inputs --python ${ROPEPP_PYTHON})
set_tests_properties(hardening_bad_inputs PROPERTIES LABELS hardening TIMEOUT 600)

add_test(NAME hardening_long_chat
  COMMAND ${ROPEPP_PYTHON} ${CMAKE_SOURCE_DIR}/tests/e2e/long_chat.py --ropepp $<TARGET_FILE:ropepp>
          --work ${CMAKE_BINARY_DIR}/hardening/long_chat --python ${ROPEPP_PYTHON})
set_tests_properties(hardening_long_chat PROPERTIES LABELS hardening TIMEOUT 600)
