// Reading the IDX files of (Fashion-)MNIST, gzip-compressed or plain, with
// every defect reported as a std::runtime_error that names the file and the
// problem (missing, unreadable, truncated, corrupt gzip, bad magic number,
// counts that disagree with the data or with each other, labels out of range).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace bnorm::train {

struct IdxImages {
  int64_t count = 0, rows = 0, cols = 0;
  std::vector<uint8_t> pixels;  // count * rows * cols, row-major per image
};

// Magic 0x00000803: unsigned bytes, three dimensions (count, rows, cols).
IdxImages read_idx_images(const std::filesystem::path& path);
// Magic 0x00000801: unsigned bytes, one dimension; every label < num_classes.
std::vector<uint8_t> read_idx_labels(const std::filesystem::path& path, int num_classes = 10);

// One split of the data set: images scaled to [0, 1], one row per image.
struct Split {
  int64_t count = 0, features = 0;
  std::vector<float> x;  // count * features
  std::vector<uint8_t> labels;
};

// kind "train" or "t10k": reads DIR/KIND-images-idx3-ubyte.gz and
// DIR/KIND-labels-idx1-ubyte.gz (or the same names without .gz) and checks
// that both hold the same number of examples of 28x28 pixels.
Split load_fashion_mnist(const std::filesystem::path& dir, const std::string& kind);

}  // namespace bnorm::train
