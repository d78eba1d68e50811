// The IDX loader against small files written here: the valid cases read
// back exactly what was written, every defect is an error naming the file
// and the problem.
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <idx.hpp>
#include <string>
#include <vector>

namespace bnorm::train {
namespace {
namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

void put32(Bytes& b, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) b.push_back(uint8_t(v >> shift));
}

Bytes images_file(uint32_t count, uint32_t rows, uint32_t cols, const Bytes& pixels,
                  uint32_t magic = 0x803) {
  Bytes b;
  put32(b, magic);
  put32(b, count);
  put32(b, rows);
  put32(b, cols);
  b.insert(b.end(), pixels.begin(), pixels.end());
  return b;
}

Bytes labels_file(uint32_t count, const Bytes& labels, uint32_t magic = 0x801) {
  Bytes b;
  put32(b, magic);
  put32(b, count);
  b.insert(b.end(), labels.begin(), labels.end());
  return b;
}

class IdxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("bnorm_idx_" +
            std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path gz(const std::string& name, const Bytes& data) {
    const auto p = dir_ / name;
    gzFile f = gzopen(p.c_str(), "wb");
    EXPECT_NE(f, nullptr);
    if (!data.empty()) {
      EXPECT_EQ(gzwrite(f, data.data(), unsigned(data.size())), int(data.size()));
    }
    gzclose(f);
    return p;
  }
  fs::path plain(const std::string& name, const Bytes& data) {
    const auto p = dir_ / name;
    std::ofstream(p, std::ios::binary)
        .write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size()));
    return p;
  }
  Bytes raw(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return Bytes(std::istreambuf_iterator<char>(in), {});
  }

  fs::path dir_;
};

// The error must name the file and contain the expected problem.
template <class F>
void expect_error(F&& f, const fs::path& file, const std::string& problem) {
  try {
    f();
    ADD_FAILURE() << "no error for " << file << " (expected: " << problem << ")";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(file.string()), std::string::npos) << what;
    EXPECT_NE(what.find(problem), std::string::npos) << what;
  }
}

Bytes pattern(size_t n) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = uint8_t((i * 37 + 11) % 256);
  return b;
}

TEST_F(IdxTest, ReadsImagesAndLabelsGzipAndPlain) {
  const Bytes px = pattern(3 * 2 * 4);
  for (bool compressed : {true, false}) {
    const auto ip =
        compressed ? gz("i.gz", images_file(3, 2, 4, px)) : plain("i", images_file(3, 2, 4, px));
    const auto lp =
        compressed ? gz("l.gz", labels_file(3, {7, 0, 9})) : plain("l", labels_file(3, {7, 0, 9}));
    const auto im = read_idx_images(ip);
    EXPECT_EQ(im.count, 3);
    EXPECT_EQ(im.rows, 2);
    EXPECT_EQ(im.cols, 4);
    EXPECT_EQ(im.pixels, px);
    EXPECT_EQ(read_idx_labels(lp), (Bytes{7, 0, 9}));
  }
}

TEST_F(IdxTest, LoadsASplitScaledToUnitRange) {
  const Bytes px = pattern(2 * 28 * 28);
  gz("train-images-idx3-ubyte.gz", images_file(2, 28, 28, px));
  gz("train-labels-idx1-ubyte.gz", labels_file(2, {3, 8}));
  const auto s = load_fashion_mnist(dir_, "train");
  ASSERT_EQ(s.count, 2);
  ASSERT_EQ(s.features, 784);
  ASSERT_EQ(s.x.size(), px.size());
  for (size_t i = 0; i < px.size(); ++i) EXPECT_FLOAT_EQ(s.x[i], float(px[i]) / 255.0f);
  EXPECT_EQ(s.labels, (Bytes{3, 8}));
}

TEST_F(IdxTest, MissingFile) {
  const auto p = dir_ / "nothing-here.gz";
  expect_error([&] { read_idx_images(p); }, p, "file not found");
  expect_error([&] { load_fashion_mnist(dir_, "t10k"); }, dir_ / "t10k-images-idx3-ubyte.gz",
               "file not found");
}

TEST_F(IdxTest, EmptyFile) {
  const auto p = plain("empty", {});
  expect_error([&] { read_idx_labels(p); }, p, "truncated");
}

TEST_F(IdxTest, BadMagicNumber) {
  // A labels file where images are expected, and an images file as labels.
  const auto l = gz("labels.gz", labels_file(2, {1, 2}));
  expect_error([&] { read_idx_images(l); }, l, "bad magic number 0x00000801");
  const auto i = gz("images.gz", images_file(1, 1, 1, {5}));
  expect_error([&] { read_idx_labels(i); }, i, "bad magic number 0x00000803");
  const auto junk = gz("junk.gz", {'G', 'I', 'F', '8', '9', 'a', 0, 0, 0, 0, 0, 0});
  expect_error([&] { read_idx_images(junk); }, junk, "bad magic number");
}

TEST_F(IdxTest, TruncatedHeader) {
  Bytes b;
  put32(b, 0x803);
  put32(b, 10);
  const auto p = gz("short-header.gz", b);
  expect_error([&] { read_idx_images(p); }, p, "truncated header");
}

TEST_F(IdxTest, TruncatedPayload) {
  // The header announces 5 images of 2x2, only 4 follow.
  const auto p = gz("short.gz", images_file(5, 2, 2, pattern(16)));
  expect_error([&] { read_idx_images(p); }, p, "truncated");
  const auto l = gz("short-labels.gz", labels_file(4, {1, 2, 3}));
  expect_error([&] { read_idx_labels(l); }, l, "truncated");
}

TEST_F(IdxTest, WrongCountMoreDataThanAnnounced) {
  const auto p = gz("long.gz", images_file(3, 2, 2, pattern(16)));
  expect_error([&] { read_idx_images(p); }, p, "wrong count");
  const auto l = gz("long-labels.gz", labels_file(2, {1, 2, 3}));
  expect_error([&] { read_idx_labels(l); }, l, "wrong count");
}

TEST_F(IdxTest, TruncatedGzipStream) {
  const auto full = gz("full.gz", images_file(50, 8, 8, pattern(50 * 64)));
  Bytes data = raw(full);
  data.resize(data.size() / 2);
  const auto p = plain("cut.gz", data);
  expect_error([&] { read_idx_images(p); }, p, "truncated gzip stream");
}

TEST_F(IdxTest, CorruptGzipData) {
  const auto full = gz("full.gz", images_file(50, 8, 8, pattern(50 * 64)));
  Bytes data = raw(full);
  // Overwrite the compressed payload (past the 10-byte gzip header).
  for (size_t i = 12; i < 40 && i < data.size(); ++i) data[i] ^= 0xa5;
  const auto p = plain("corrupt.gz", data);
  expect_error([&] { read_idx_images(p); }, p, "corrupt gzip data");
  // A damaged trailer: the payload inflates, the CRC does not match.
  Bytes crc = raw(full);
  crc[crc.size() - 6] ^= 0xff;
  const auto q = plain("crc.gz", crc);
  expect_error([&] { read_idx_images(q); }, q, "corrupt gzip data");
}

TEST_F(IdxTest, LabelOutOfRange) {
  const auto p = gz("labels.gz", labels_file(4, {0, 9, 10, 3}));
  expect_error([&] { read_idx_labels(p); }, p, "label 10 at index 2 is out of range 0..9");
}

TEST_F(IdxTest, ImagesAndLabelsDisagreeOnCount) {
  gz("train-images-idx3-ubyte.gz", images_file(3, 28, 28, pattern(3 * 784)));
  gz("train-labels-idx1-ubyte.gz", labels_file(2, {1, 2}));
  expect_error([&] { load_fashion_mnist(dir_, "train"); }, dir_ / "train-labels-idx1-ubyte.gz",
               "wrong count: 2 labels for 3 images");
}

TEST_F(IdxTest, ImagesOfTheWrongSize) {
  gz("train-images-idx3-ubyte.gz", images_file(2, 27, 28, pattern(2 * 27 * 28)));
  gz("train-labels-idx1-ubyte.gz", labels_file(2, {1, 2}));
  expect_error([&] { load_fashion_mnist(dir_, "train"); }, dir_ / "train-images-idx3-ubyte.gz",
               "expected 28x28");
}

}  // namespace
}  // namespace bnorm::train
