// The staged computational graph of one batch-norm channel as a Graphviz
// drawing: every node labelled with its forward value and the gradient that
// flows back into it.
#pragma once

#include <bnorm/reference.hpp>
#include <filesystem>
#include <string>

namespace bnorm::graph {

std::string staged_graph_dot(const reference::StagedForward& f, const reference::StagedBackward& b);
// Runs Graphviz `dot -Tpng`; throws naming the file when dot is missing or fails.
void render_png(const std::string& dot, const std::filesystem::path& png);

}  // namespace bnorm::graph
