// line_editor.cpp: see line_editor.h.
#include "line_editor.h"

#include <unistd.h>

#include <cerrno>
#include <clocale>
#include <cstdio>
#include <cstring>

#ifdef ROPEPP_HAVE_LIBEDIT
#include <histedit.h>
#endif

namespace ropepp::cli {

struct LineEditor::Impl {
  bool prompts = false;
  // Plain reads: bytes read from stdin but not yet returned; eof once read() returned 0.
  std::string buf;
  bool eof = false;
#ifdef ROPEPP_HAVE_LIBEDIT
  EditLine* el = nullptr;
  History* hist = nullptr;
  std::string prompt;
  static char* prompt_fn(EditLine* e) {
    void* p = nullptr;
    el_get(e, EL_CLIENTDATA, &p);
    return const_cast<char*>(static_cast<Impl*>(p)->prompt.c_str());
  }
#endif

  Status read_plain(const std::string& prompt_text, std::string& line) {
    if (prompts && buf.empty()) {
      std::FILE* f = isatty(STDOUT_FILENO) ? stdout : stderr;  // stdout may be a file of replies
      std::fputs(prompt_text.c_str(), f);
      std::fflush(f);
    }
    for (;;) {
      const size_t nl = buf.find('\n');
      if (nl != std::string::npos) {
        line = buf.substr(0, nl);
        buf.erase(0, nl + 1);
        return Status::Line;
      }
      if (eof) {
        if (buf.empty()) return Status::Eof;
        line = std::move(buf);
        buf.clear();
        return Status::Line;
      }
      char chunk[4096];
      const ssize_t n = ::read(STDIN_FILENO, chunk, sizeof chunk);
      if (n < 0) {
        if (errno == EINTR) {
          buf.clear();  // a terminal discards the typed line on SIGINT too
          return Status::Interrupted;
        }
        eof = true;  // unreadable stdin: treat as its end
      } else if (n == 0) {
        eof = true;
      } else {
        buf.append(chunk, size_t(n));
      }
    }
  }
};

LineEditor::LineEditor(bool prompts) : impl_(std::make_unique<Impl>()) {
  impl_->prompts = prompts;
#ifdef ROPEPP_HAVE_LIBEDIT
  if (prompts && isatty(STDIN_FILENO) && isatty(STDOUT_FILENO)) {
    std::setlocale(LC_CTYPE, "");  // libedit decodes multibyte (UTF-8) input with the locale
    impl_->el = el_init("ropepp", stdin, stdout, stderr);
    if (impl_->el) {
      impl_->hist = history_init();
      HistEvent ev;
      history(impl_->hist, &ev, H_SETSIZE, 1000);
      history(impl_->hist, &ev, H_SETUNIQUE, 1);
      el_set(impl_->el, EL_CLIENTDATA, impl_.get());
      el_set(impl_->el, EL_PROMPT, &Impl::prompt_fn);
      el_set(impl_->el, EL_EDITOR, "emacs");
      el_set(impl_->el, EL_HIST, history, impl_->hist);
      el_source(impl_->el, nullptr);  // ~/.editrc
    }
  }
#endif
}

LineEditor::~LineEditor() {
#ifdef ROPEPP_HAVE_LIBEDIT
  if (impl_->el) el_end(impl_->el);
  if (impl_->hist) history_end(impl_->hist);
#endif
}

bool LineEditor::built_with_libedit() {
#ifdef ROPEPP_HAVE_LIBEDIT
  return true;
#else
  return false;
#endif
}

bool LineEditor::editing() const {
#ifdef ROPEPP_HAVE_LIBEDIT
  return impl_->el != nullptr;
#else
  return false;
#endif
}

LineEditor::Status LineEditor::read(const std::string& prompt, std::string& line) {
  line.clear();
#ifdef ROPEPP_HAVE_LIBEDIT
  if (impl_->el) {
    impl_->prompt = prompt;
    int count = 0;
    errno = 0;
    const char* s = el_gets(impl_->el, &count);
    if (!s) {
      if (count < 0 && errno == EINTR) return Status::Interrupted;
      return Status::Eof;
    }
    line.assign(s, size_t(count));
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    return Status::Line;
  }
#endif
  return impl_->read_plain(prompt, line);
}

void LineEditor::add_history(const std::string& line) {
#ifdef ROPEPP_HAVE_LIBEDIT
  if (impl_->hist && !line.empty()) {
    HistEvent ev;
    history(impl_->hist, &ev, H_ENTER, line.c_str());
  }
#else
  (void)line;
#endif
}

}  // namespace ropepp::cli
