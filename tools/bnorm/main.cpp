// bnorm: the command-line tool. `bnorm --help` lists the subcommands.
#include <fmt/core.h>

#include <exception>

#include "commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{"bnorm: batch normalization, checked and explained"};
  app.require_subcommand(1);
  int exit_code = 0;
  bnorm::cli::register_gradcheck(app, &exit_code);
  bnorm::cli::register_explain(app, &exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    fmt::print(stderr, "bnorm: error: {}\n", e.what());
    return 2;
  }
  return exit_code;
}
