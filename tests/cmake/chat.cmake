# chat.cmake: `ropepp chat` end to end (label `chat`). The conversation logic itself is tested by the
# GoogleTest cases of tests/test_chat.cpp (label `unit`; `ctest -R 'Chat'`).
#
# Each script runs on two models:
#   default  models/default, the embedded trained model (when the source tree has it)
#   tiny     ${CMAKE_BINARY_DIR}/fixtures/chat_tiny, written by the chat_fixture test: a tiny random checkpoint
#            (tools/gen_checkpoint.py) + a sentencepiece tokenizer trained by spm_train (tests/e2e/chat_fixture.sh);
#            its replies are random bytes, control characters included (the terminal must stay sane)
#
#   chat_piped_<model>  stdin piped: stdout is exactly the replies, commands/notices on stderr, exit 0
#   chat_tmux_<model>   a real terminal (tmux): reply, Ctrl-C mid-reply and at the prompt, editing keys, /reset,
#                       /save + /load, overflow with -c 96, a too-long message, /exit and Ctrl-D with status 0
#
#   ctest --test-dir build -L chat
set(_chat_e2e ${CMAKE_SOURCE_DIR}/tests/e2e)
set(_chat_tiny ${CMAKE_BINARY_DIR}/fixtures/chat_tiny)

add_test(NAME chat_fixture COMMAND bash ${_chat_e2e}/chat_fixture.sh ${_chat_tiny} ${ROPEPP_PYTHON})
set_tests_properties(chat_fixture PROPERTIES FIXTURES_SETUP chat_tiny LABELS chat TIMEOUT 300)

set(_chat_models "tiny|${_chat_tiny}")
if(EXISTS ${CMAKE_SOURCE_DIR}/models/default/config.json)
  list(APPEND _chat_models "default|${CMAKE_SOURCE_DIR}/models/default")
endif()

foreach(entry ${_chat_models})
  string(REPLACE "|" ";" parts "${entry}")
  list(GET parts 0 name)
  list(GET parts 1 dir)
  add_test(NAME chat_piped_${name}
           COMMAND bash ${_chat_e2e}/chat_piped.sh $<TARGET_FILE:ropepp> ${dir} ${CMAKE_BINARY_DIR}/chat_piped_${name}
                   ${ROPEPP_PYTHON})
  add_test(NAME chat_tmux_${name}
           COMMAND bash ${_chat_e2e}/chat_tmux.sh $<TARGET_FILE:ropepp> ${dir} ${CMAKE_BINARY_DIR}/chat_tmux_${name}
                   ${ROPEPP_PYTHON})
  set_tests_properties(chat_piped_${name} PROPERTIES LABELS chat TIMEOUT 300)
  # RUN_SERIAL: the test sleeps and waits on a terminal; its waits allow 60 s each on a loaded machine.
  set_tests_properties(chat_tmux_${name} PROPERTIES LABELS chat TIMEOUT 600 RUN_SERIAL ON)
  if(name STREQUAL "tiny")
    set_tests_properties(chat_piped_${name} chat_tmux_${name} PROPERTIES FIXTURES_REQUIRED chat_tiny)
  endif()
endforeach()
