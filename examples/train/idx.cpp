#include "idx.hpp"

#include <zlib.h>

#include <cstdio>
#include <stdexcept>
#include <system_error>

namespace bnorm::train {
namespace {

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& problem) {
  throw std::runtime_error(path.string() + ": " + problem);
}

// The whole decompressed content. gzread passes plain files through, so an
// uncompressed copy of the data set reads the same.
std::vector<uint8_t> read_all(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) fail(path, "file not found");
  if (std::filesystem::is_directory(path, ec)) fail(path, "is a directory, not an IDX file");
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) fail(path, "cannot open for reading");
  std::vector<uint8_t> data;
  uint8_t chunk[1 << 16];
  for (;;) {
    const int got = gzread(f, chunk, sizeof chunk);
    if (got < 0) {
      int code = 0;
      const std::string why = gzerror(f, &code);
      gzclose(f);
      fail(path, "corrupt gzip data (" + why + ")");
    }
    if (got == 0) break;
    data.insert(data.end(), chunk, chunk + got);
  }
  // A gzip stream cut short reads as a clean end of file; zlib only says so
  // through gzerror (Z_BUF_ERROR, "unexpected end of file").
  int code = Z_OK;
  const std::string why = gzerror(f, &code);
  gzclose(f);
  if (code == Z_BUF_ERROR) fail(path, "truncated gzip stream (" + why + ")");
  if (code != Z_OK && code != Z_STREAM_END) fail(path, "corrupt gzip data (" + why + ")");
  return data;
}

uint32_t big_endian(const std::vector<uint8_t>& d, size_t at) {
  return uint32_t(d[at]) << 24 | uint32_t(d[at + 1]) << 16 | uint32_t(d[at + 2]) << 8 |
         uint32_t(d[at + 3]);
}

std::string hex(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

// Checks the header (magic, dimensions) and that the payload has exactly the
// size the dimensions announce; returns the dimensions.
std::vector<int64_t> check_header(const std::filesystem::path& path, const std::vector<uint8_t>& d,
                                  uint32_t magic, const char* what) {
  const size_t rank = magic & 0xff;
  const size_t header = 4 + 4 * rank;
  if (d.size() < 4) fail(path, "truncated: " + std::to_string(d.size()) + " bytes, no IDX header");
  if (big_endian(d, 0) != magic)
    fail(path, "bad magic number " + hex(big_endian(d, 0)) + " (expected " + hex(magic) + " for " +
                   what + ")");
  if (d.size() < header)
    fail(path, "truncated header: " + std::to_string(d.size()) + " bytes, need " +
                   std::to_string(header));
  std::vector<int64_t> dims(rank);
  uint64_t payload = 1;
  for (size_t i = 0; i < rank; ++i) {
    dims[i] = big_endian(d, 4 + 4 * i);
    payload *= uint64_t(dims[i]);
  }
  const uint64_t have = d.size() - header;
  if (have < payload)
    fail(path, "truncated: the header announces " + std::to_string(dims[0]) + " " + what + " (" +
                   std::to_string(payload) + " bytes) but only " + std::to_string(have) +
                   " bytes follow");
  if (have > payload)
    fail(path, "wrong count: the header announces " + std::to_string(dims[0]) + " " + what + " (" +
                   std::to_string(payload) + " bytes) but " + std::to_string(have) +
                   " bytes follow");
  return dims;
}

std::filesystem::path find(const std::filesystem::path& dir, const std::string& name) {
  const auto gz = dir / (name + ".gz");
  std::error_code ec;
  if (std::filesystem::exists(gz, ec) || !std::filesystem::exists(dir / name, ec)) return gz;
  return dir / name;
}

}  // namespace

IdxImages read_idx_images(const std::filesystem::path& path) {
  const auto d = read_all(path);
  const auto dims = check_header(path, d, 0x00000803u, "images");
  if (dims[1] == 0 || dims[2] == 0)
    fail(path, "images of " + std::to_string(dims[1]) + "x" + std::to_string(dims[2]) + " pixels");
  IdxImages im;
  im.count = dims[0];
  im.rows = dims[1];
  im.cols = dims[2];
  im.pixels.assign(d.begin() + 16, d.end());
  return im;
}

std::vector<uint8_t> read_idx_labels(const std::filesystem::path& path, int num_classes) {
  const auto d = read_all(path);
  check_header(path, d, 0x00000801u, "labels");
  std::vector<uint8_t> labels(d.begin() + 8, d.end());
  for (size_t i = 0; i < labels.size(); ++i)
    if (labels[i] >= num_classes)
      fail(path, "label " + std::to_string(labels[i]) + " at index " + std::to_string(i) +
                     " is out of range 0.." + std::to_string(num_classes - 1));
  return labels;
}

Split load_fashion_mnist(const std::filesystem::path& dir, const std::string& kind) {
  const auto images_path = find(dir, kind + "-images-idx3-ubyte");
  const auto labels_path = find(dir, kind + "-labels-idx1-ubyte");
  const auto images = read_idx_images(images_path);
  if (images.rows != 28 || images.cols != 28)
    fail(images_path, "images of " + std::to_string(images.rows) + "x" +
                          std::to_string(images.cols) + " pixels, expected 28x28");
  const auto labels = read_idx_labels(labels_path, 10);
  if (int64_t(labels.size()) != images.count)
    fail(labels_path, "wrong count: " + std::to_string(labels.size()) + " labels for " +
                          std::to_string(images.count) + " images in " + images_path.string());
  Split s;
  s.count = images.count;
  s.features = images.rows * images.cols;
  s.x.resize(images.pixels.size());
  for (size_t i = 0; i < s.x.size(); ++i) s.x[i] = float(images.pixels[i]) / 255.0f;
  s.labels = labels;
  return s;
}

}  // namespace bnorm::train
