// line_editor.h: reads the chat REPL's input lines. With ROPEPP_HAVE_LIBEDIT (libedit found by CMake) and a
// terminal on stdin and stdout: libedit line editing (emacs keys, ~/.editrc) and in-memory history; otherwise
// plain reads from stdin (a prompt only when stdin is a terminal). A SIGINT while waiting (Ctrl-C, with a
// handler installed without SA_RESTART) ends the read with Status::Interrupted and the line is discarded.
#pragma once

#include <memory>
#include <string>

namespace ropepp::cli {

class LineEditor {
 public:
  enum class Status { Line, Eof, Interrupted };

  // `prompts`: show prompts (stdin is a terminal). Line editing is used when also built with libedit
  // and stdout is a terminal.
  explicit LineEditor(bool prompts);
  ~LineEditor();
  LineEditor(const LineEditor&) = delete;
  LineEditor& operator=(const LineEditor&) = delete;

  // One line without its newline. A last line without a newline is returned as a Line, then Eof.
  Status read(const std::string& prompt, std::string& line);
  void add_history(const std::string& line);
  bool editing() const;             // libedit is in use
  static bool built_with_libedit();  // ROPEPP_HAVE_LIBEDIT

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ropepp::cli
