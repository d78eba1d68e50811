// Subcommands of the bnorm command-line tool; each file registers its own.
#pragma once

#include <CLI/CLI.hpp>

namespace bnorm::cli {

// Each register_* adds a subcommand whose callback sets *exit_code.
void register_gradcheck(CLI::App& app, int* exit_code);
void register_explain(CLI::App& app, int* exit_code);

}  // namespace bnorm::cli
