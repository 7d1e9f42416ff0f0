// Tests of trainer/io/safetensors: exact F16/BF16 conversion against bit
// patterns from NumPy and PyTorch, write/read round trip, and one error per
// kind of corrupt header, built as in-memory bytes and fed to Parse.
#include "trainer/io/safetensors.h"

#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <bit>

#include "common/error.h"
#include "tests/support/test_util.h"

namespace hetermoe::io {
namespace {

using testing::ExpectError;
using testing::ScratchDir;

// A safetensors file from a header text and a data section.
std::string Bytes(const std::string& header, const std::string& data = "") {
  uint64_t n = header.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

std::string U16Data(const std::vector<uint16_t>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 2);
}

uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

struct BitCase {
  uint16_t in;
  uint32_t out;  // float32 bits
};

// Ground truth computed independently of this code:
//   np.array(h, np.uint16).view(np.float16).astype(np.float32).view(np.uint32)
// with NumPy 1.24 (NaN payloads are kept, signalling NaNs stay signalling).
const BitCase kF16Cases[] = {
    {0x0000, 0x00000000u},  // 0.0
    {0x8000, 0x80000000u},  // -0.0
    {0x0001, 0x33800000u},  // 5.9604645e-08, smallest subnormal
    {0x8001, 0xb3800000u},  // -5.9604645e-08
    {0x0155, 0x37aa8000u},  // 2.0325184e-05, subnormal
    {0x03ff, 0x387fc000u},  // 6.097555e-05, largest subnormal
    {0x0400, 0x38800000u},  // 6.1035156e-05, smallest normal
    {0x3c00, 0x3f800000u},  // 1.0
    {0xbc00, 0xbf800000u},  // -1.0
    {0x3555, 0x3eaaa000u},  // 0.33325195
    {0x4248, 0x40490000u},  // 3.140625
    {0x7bff, 0x477fe000u},  // 65504.0, largest finite
    {0xfbff, 0xc77fe000u},  // -65504.0
    {0x7c00, 0x7f800000u},  // inf
    {0xfc00, 0xff800000u},  // -inf
    {0x7e00, 0x7fc00000u},  // quiet nan
    {0x7c01, 0x7f802000u},  // signalling nan
    {0xfe00, 0xffc00000u},  // -nan
    {0x7fff, 0x7fffe000u},  // nan, full payload
};

// Ground truth from PyTorch 1.13 (independent of this code):
//   torch.tensor(h, dtype=torch.int16).view(torch.bfloat16).float().view(torch.int32)
const BitCase kBF16Cases[] = {
    {0x0000, 0x00000000u},  // 0.0
    {0x8000, 0x80000000u},  // -0.0
    {0x0001, 0x00010000u},  // 9.18e-41, smallest subnormal
    {0x807f, 0x807f0000u},  // -1.17e-38, largest negative subnormal
    {0x0080, 0x00800000u},  // 1.1754944e-38, smallest normal
    {0x3f80, 0x3f800000u},  // 1.0
    {0xbf80, 0xbf800000u},  // -1.0
    {0x4049, 0x40490000u},  // 3.140625
    {0x7f7f, 0x7f7f0000u},  // 3.39e+38, largest finite
    {0xff7f, 0xff7f0000u},  // -3.39e+38
    {0x7f80, 0x7f800000u},  // inf
    {0xff80, 0xff800000u},  // -inf
    {0x7fc0, 0x7fc00000u},  // nan
    {0x7f81, 0x7f810000u},  // signalling nan
    {0xffc1, 0xffc10000u},  // -nan with payload
    {0x3eab, 0x3eab0000u},  // 0.333984375
};

void ExpectConversion(const char* dtype, const BitCase* cases, size_t n) {
  std::vector<uint16_t> in;
  for (size_t i = 0; i < n; ++i) in.push_back(cases[i].in);
  const std::string header = std::string(R"({"t":{"dtype":")") + dtype + R"(","shape":[)" +
                             std::to_string(n) + R"(],"data_offsets":[0,)" + std::to_string(2 * n) + "]}}";
  SafetensorsFile file = SafetensorsFile::Parse(Bytes(header, U16Data(in)), "mem");
  std::vector<float> out = file.ReadFloat("t");
  ASSERT_EQ(out.size(), n);
  for (size_t i = 0; i < n; ++i) {
    EXPECT_EQ(FloatBits(out[i]), cases[i].out) << dtype << " input 0x" << std::hex << cases[i].in;
  }
}

TEST(SafetensorsTest, F16ConvertsExactly) {
  ExpectConversion("F16", kF16Cases, std::size(kF16Cases));
}

TEST(SafetensorsTest, BF16ConvertsExactly) {
  ExpectConversion("BF16", kBF16Cases, std::size(kBF16Cases));
}

// A filled tensor larger than one piece is asked for in order, in pieces of
// at most kFillFloats, and lands whole (F32 and BF16).
TEST(SafetensorsTest, FilledTensorsComeInPieces) {
  ScratchDir dir;
  const int64_t n = 2 * TensorToWrite::kFillFloats + 3;
  auto value = [](int64_t k) { return static_cast<float>(k % 251) - 100.0f; };  // exact in bf16
  for (const DType dtype : {DType::kF32, DType::kBF16}) {
    std::vector<std::pair<int64_t, int64_t>> asked;
    TensorToWrite t{"big", {n}, nullptr, [&](int64_t first, int64_t count, float* out) {
                      asked.emplace_back(first, count);
                      for (int64_t k = 0; k < count; ++k) out[k] = value(first + k);
                    }, dtype};
    const std::string path = dir.Path("big.safetensors");
    WriteSafetensors(path, {t}, {});
    EXPECT_EQ(asked, (std::vector<std::pair<int64_t, int64_t>>{
                         {0, TensorToWrite::kFillFloats}, {TensorToWrite::kFillFloats, TensorToWrite::kFillFloats},
                         {2 * TensorToWrite::kFillFloats, 3}}));
    const std::vector<float> back = SafetensorsFile::Load(path).ReadFloat("big");
    ASSERT_EQ(static_cast<int64_t>(back.size()), n);
    int64_t wrong = 0;
    for (int64_t k = 0; k < n; ++k) wrong += back[k] != value(k);
    EXPECT_EQ(wrong, 0) << (dtype == DType::kBF16 ? "bf16" : "f32");
  }
}

TEST(SafetensorsTest, RoundTripKeepsOrderValuesAndMetadata) {
  ScratchDir dir;
  const std::string path = dir.Path("model.safetensors");
  const std::vector<float> b = {1.5f, -2.0f, 0.0f, 1e-30f, 3.0e38f, -0.0f};
  const float scalar = 7.25f;
  const std::vector<float> a = {0.1f, 0.2f};
  // Deliberately not in name order: the data must follow the given order.
  WriteSafetensors(path,
                   {{"zeta.b", {2, 3}, b.data()},
                    {"alpha.scalar", {}, &scalar},
                    {"empty", {0, 4}, nullptr},
                    {"mid.a", {2}, a.data()}},
                   {{"format", "pt"}, {"note", "line\nbreak"}});

  const std::string raw = ScratchDir::ReadFile(path);
  uint64_t header_size;
  std::memcpy(&header_size, raw.data(), 8);
  EXPECT_EQ(header_size % 8, 0u) << "data must start 8-byte aligned";
  const std::string header = raw.substr(8, header_size);
  EXPECT_EQ(header.front(), '{');
  EXPECT_EQ(header.find_last_not_of(' '), header.rfind('}')) << "padding must be spaces";
  EXPECT_EQ(raw.size(), 8 + header_size + (6 + 1 + 0 + 2) * 4);
  EXPECT_LT(header.find("__metadata__"), header.find("zeta.b"));
  EXPECT_LT(header.find("zeta.b"), header.find("alpha.scalar"));

  SafetensorsFile file = SafetensorsFile::Load(path);
  EXPECT_EQ(file.source(), path);
  EXPECT_EQ(file.metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"note", "line\nbreak"}}));
  ASSERT_EQ(file.tensors().size(), 4u);
  const TensorInfo* zb = file.Find("zeta.b");
  ASSERT_NE(zb, nullptr);
  EXPECT_EQ(zb->dtype, DType::kF32);
  EXPECT_EQ(zb->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(zb->begin, 0u);
  EXPECT_EQ(zb->end, 24u);
  EXPECT_EQ(file.Find("alpha.scalar")->begin, 24u);
  EXPECT_EQ(file.Find("mid.a")->begin, 28u);
  EXPECT_EQ(file.Find("nope"), nullptr);

  std::vector<float> got = file.ReadFloat("zeta.b");
  ASSERT_EQ(got.size(), b.size());
  for (size_t i = 0; i < b.size(); ++i) EXPECT_EQ(FloatBits(got[i]), FloatBits(b[i])) << i;
  EXPECT_EQ(file.ReadFloat("alpha.scalar"), std::vector<float>{scalar});
  EXPECT_TRUE(file.ReadFloat("empty").empty());
  float into[2];
  file.ReadInto("mid.a", {2}, into);
  EXPECT_EQ(into[0], a[0]);
  EXPECT_EQ(into[1], a[1]);
}

TEST(SafetensorsTest, ReadErrorsNameTheTensor) {
  const std::string header = R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})";
  SafetensorsFile file = SafetensorsFile::Parse(Bytes(header, std::string(24, '\0')), "ckpt");
  float out[6];
  ExpectError([&] { file.ReadInto("w", {3, 2}, out); }, "ckpt",
              "tensor \"w\" has shape [2, 3], expected [3, 2]");
  ExpectError([&] { file.ReadFloat("missing"); }, "ckpt", "no tensor \"missing\"");
  ExpectError([&] { file.ReadInto("missing", {1}, out); }, "ckpt", "no tensor \"missing\"");
}

TEST(SafetensorsTest, LoadMissingFileNamesPathAndErrno) {
  ScratchDir dir;
  const std::string path = dir.Path("absent.safetensors");
  ExpectError([&] { SafetensorsFile::Load(path); }, path, "cannot open: No such file or directory");
}

TEST(SafetensorsTest, WriteErrors) {
  ScratchDir dir;
  const std::string path = dir.Path("out.safetensors");
  const float x[2] = {1, 2};
  ExpectError([&] { WriteSafetensors(path, {{"a", {1}, x}, {"a", {1}, x}}); }, path, "repeated");
  ExpectError([&] { WriteSafetensors(path, {{"__metadata__", {1}, x}}); }, path, "reserved");
  ExpectError([&] { WriteSafetensors(path, {{"a", {-1, 2}, x}}); }, path, "bad shape [-1, 2]");
  ExpectError([&] { WriteSafetensors(path, {{"a", {2}, nullptr}}); }, path, "no data");
  const std::string bad_dir = dir.Path("no/such/dir/out.safetensors");
  ExpectError([&] { WriteSafetensors(bad_dir, {{"a", {2}, x}}); }, bad_dir,
              "cannot create: No such file or directory");
}

// Inputs the reader accepts although Hugging Face's loader is stricter.
TEST(SafetensorsTest, LenientWhereHarmless) {
  const std::string f32 = std::string(8, '\0');
  // Unused bytes after the last tensor, and a gap between tensors.
  SafetensorsFile trailing = SafetensorsFile::Parse(
      Bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", f32 + "garbage"), "mem");
  EXPECT_EQ(trailing.tensors().size(), 1u);
  SafetensorsFile gap = SafetensorsFile::Parse(
      Bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
            R"("b":{"dtype":"F32","shape":[],"data_offsets":[8,12]}})",
            f32 + "xxxx"),
      "mem");
  EXPECT_EQ(gap.Find("b")->begin, 8u);
  // Null metadata, empty header, empty tensors touching a full one, and
  // trailing whitespace in the header (Hugging Face's padding).
  SafetensorsFile misc = SafetensorsFile::Parse(
      Bytes(R"({"__metadata__":null,"e":{"dtype":"BF16","shape":[0],"data_offsets":[0,0]},)"
            R"("f":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},)"
            R"("g":{"dtype":"F16","shape":[3,0],"data_offsets":[4,4]}}   )",
            std::string("\0\x3c\0\x3c", 4)),
      "mem");
  EXPECT_TRUE(misc.metadata().empty());
  EXPECT_EQ(misc.ReadFloat("f"), (std::vector<float>{1.0f, 1.0f}));
  EXPECT_EQ(SafetensorsFile::Parse(Bytes("{}"), "mem").tensors().size(), 0u);
}

struct CorruptCase {
  const char* name;
  std::string bytes;
  const char* needle;  // expected in the message
};

std::string Entry(const std::string& fields) { return R"({"w":{)" + fields + "}}"; }
const std::string kF32x2 = R"("dtype":"F32","shape":[2])";

std::vector<CorruptCase> CorruptCases() {
  const std::string eight(8, '\0');
  std::string valid = Bytes(Entry(kF32x2 + R"(,"data_offsets":[0,8])"), eight);
  std::string huge_size = valid;
  std::memset(huge_size.data(), 0xff, 8);
  return {
      {"Empty", "", "file of 0 bytes is too short for the 8-byte header size"},
      {"ShorterThanHeaderSize", std::string("\x05\0\0", 3), "file of 3 bytes is too short"},
      {"HeaderSizePastEnd", Bytes("{}").substr(0, 9), "header size 2 exceeds the 1 bytes after it"},
      {"HeaderSizeHuge", huge_size, "header size 18446744073709551615 exceeds"},
      {"Truncated", valid.substr(0, valid.size() - 3),
       "tensor \"w\": data_offsets [0, 8) run past the data section of 5 bytes"},
      {"HeaderNotJson", Bytes("{\"w\":"), "header is not valid JSON"},
      {"HeaderBinaryGarbage", Bytes(std::string("\xff\x00\n\x01", 4)), "header is not valid JSON"},
      {"HeaderEmpty", Bytes(""), "header is not valid JSON"},
      // nlohmann reports this as out_of_range, not parse_error (found by fuzz_corpus_test).
      {"NumberBeyondDouble", Bytes(Entry(kF32x2 + R"(,"data_offsets":[0,1e400])"), eight),
       "header is not valid JSON: [json.exception.out_of_range.406] number overflow"},
      {"HeaderNotObject", Bytes("[1,2]"), "header is not a JSON object but array"},
      {"EntryNotObject", Bytes(R"({"w":3})"), "tensor \"w\": entry is not a JSON object but number"},
      {"MissingDtype", Bytes(Entry(R"("shape":[2],"data_offsets":[0,8])"), eight),
       "tensor \"w\": missing \"dtype\""},
      {"DtypeNotString", Bytes(Entry(R"("dtype":4,"shape":[2],"data_offsets":[0,8])"), eight),
       "\"dtype\" is not a string but number"},
      {"UnsupportedDtype", Bytes(Entry(R"("dtype":"F64","shape":[1],"data_offsets":[0,8])"), eight),
       "dtype \"F64\" is not supported"},
      {"UnknownDtype", Bytes(Entry(R"("dtype":"Q4_K","shape":[1],"data_offsets":[0,8])"), eight),
       "dtype \"Q4_K\" is not supported"},
      {"MissingShape", Bytes(Entry(R"("dtype":"F32","data_offsets":[0,8])"), eight), "missing \"shape\""},
      {"ShapeNotArray", Bytes(Entry(R"("dtype":"F32","shape":2,"data_offsets":[0,8])"), eight),
       "\"shape\" is not an array but number"},
      {"NegativeDim", Bytes(Entry(R"("dtype":"F32","shape":[-2],"data_offsets":[0,8])"), eight),
       "shape dimension -2 is negative"},
      {"FractionalDim", Bytes(Entry(R"("dtype":"F32","shape":[2.5],"data_offsets":[0,8])"), eight),
       "shape dimension is not an integer but 2.5"},
      {"StringDim", Bytes(Entry(R"("dtype":"F32","shape":["2"],"data_offsets":[0,8])"), eight),
       "shape dimension is not an integer but string"},
      {"DimBeyondInt64", Bytes(Entry(R"("dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,8])"), eight),
       "shape overflows"},
      {"ElementCountOverflows",
       Bytes(Entry(R"("dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8])"), eight),
       "shape overflows"},
      {"ByteCountOverflows",
       Bytes(Entry(R"("dtype":"F32","shape":[4611686018427387905],"data_offsets":[0,8])"), eight),
       "overflows 64-bit byte counts"},
      {"MissingOffsets", Bytes(Entry(kF32x2), eight), "missing \"data_offsets\""},
      {"OffsetsWrongLength", Bytes(Entry(kF32x2 + R"(,"data_offsets":[0,4,8])"), eight),
       "\"data_offsets\" is not an array of two offsets"},
      {"OffsetsNotArray", Bytes(Entry(kF32x2 + R"(,"data_offsets":{"a":0})"), eight),
       "\"data_offsets\" is not an array of two offsets"},
      {"NegativeOffset", Bytes(Entry(kF32x2 + R"(,"data_offsets":[-8,0])"), eight),
       "data_offsets begin -8 is negative"},
      {"OffsetNotInteger", Bytes(Entry(kF32x2 + R"(,"data_offsets":[0,null])"), eight),
       "data_offsets end is not an integer but null"},
      {"BeginAfterEnd", Bytes(Entry(kF32x2 + R"(,"data_offsets":[8,0])"), eight + eight),
       "data_offsets [8, 0) end before they begin"},
      {"EndPastData", Bytes(Entry(kF32x2 + R"(,"data_offsets":[4,12])"), eight),
       "data_offsets [4, 12) run past the data section of 8 bytes"},
      {"OffsetBeyondUint64", Bytes(Entry(kF32x2 + R"(,"data_offsets":[0,18446744073709551616])"), eight),
       "data_offsets end is not an integer"},
      {"ByteCountMismatch", Bytes(Entry(kF32x2 + R"(,"data_offsets":[0,6])"), eight),
       "data_offsets [0, 6) hold 6 bytes but shape [2] of F32 needs 8"},
      {"HalfByteCountMismatch",
       Bytes(Entry(R"("dtype":"BF16","shape":[2],"data_offsets":[0,8])"), eight),
       "hold 8 bytes but shape [2] of BF16 needs 4"},
      {"Overlap",
       Bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
             R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
             eight),
       "tensors \"a\" [0, 8) and \"b\" [4, 8) overlap"},
      {"EmptyTensorInsideAnother",
       Bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
             R"("b":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
             eight),
       "overlap"},
      {"Duplicate", Bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                          eight),
       "tensors \"a\" [0, 8) and \"b\" [0, 8) overlap"},
      {"MetadataNotObject", Bytes(R"({"__metadata__":[]})"), "\"__metadata__\" is not a JSON object but array"},
      {"MetadataValueNotString", Bytes(R"({"__metadata__":{"step":3}})"),
       "\"__metadata__\" value of \"step\" is not a string but number"},
      {"NameWithNewlineStaysOneLine", Bytes(R"({"a\nb":1})"), "tensor \"a\\nb\": entry is not"},
  };
}

void PrintTo(const CorruptCase& c, std::ostream* os) { *os << c.name; }

class SafetensorsCorruptTest : public ::testing::TestWithParam<CorruptCase> {};

TEST_P(SafetensorsCorruptTest, ThrowsNamingFileAndProblem) {
  const CorruptCase& c = GetParam();
  ExpectError([&] { SafetensorsFile::Parse(c.bytes, "bad.safetensors"); }, "bad.safetensors", c.needle);
}

INSTANTIATE_TEST_SUITE_P(Cases, SafetensorsCorruptTest, ::testing::ValuesIn(CorruptCases()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(SafetensorsTest, CorruptFileOnDiskNamesThePath) {
  ScratchDir dir;
  const std::string path = dir.WriteFile("bad.safetensors", Bytes("[]"));
  ExpectError([&] { SafetensorsFile::Load(path); }, path, "header is not a JSON object");
}

}  // namespace
}  // namespace hetermoe::io

namespace hetermoe::io {
namespace {

// Round to nearest, ties to even, as torch's float -> bfloat16 conversion.
TEST(SafetensorsBf16, RoundsToNearestEvenAndKeepsNaN) {
  auto bits = [](uint32_t u) { return std::bit_cast<float>(u); };
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBFloat16(bits(0x3F808000u)), 0x3F80) << "a tie rounds to the even neighbour";
  EXPECT_EQ(FloatToBFloat16(bits(0x3F818000u)), 0x3F82) << "a tie rounds to the even neighbour (up)";
  EXPECT_EQ(FloatToBFloat16(bits(0x3F808001u)), 0x3F81) << "above the tie rounds up";
  EXPECT_EQ(FloatToBFloat16(-2.5f), 0xC020);
  EXPECT_EQ(FloatToBFloat16(bits(0x7F7FFFFFu)), 0x7F80) << "the largest float rounds to infinity";
  const uint16_t nan = FloatToBFloat16(bits(0x7F800001u));
  EXPECT_EQ(nan & 0x7F80, 0x7F80);
  EXPECT_NE(nan & 0x007F, 0) << "a NaN whose payload sits in the low bits stays NaN";
}

}  // namespace
}  // namespace hetermoe::io
