// Torch binding for the CUDA top-k kernel (topk_cuda.cu): checks, stage-1 launch, stage-2 merge.
// The current stream comes from Python (torch.cuda.current_stream().cuda_stream), so this file needs only
// <torch/extension.h> and no CUDA headers.
#include <torch/extension.h>

#include <cstdint>
#include <vector>

extern "C" int jmlr_topk_cuda_launch(int dtype, const float* Q, const void* D, const float* S, int B, int N, int d,
                                     int64_t ldd, int docs_per_tile, int k, float* out_s, int64_t* out_i,
                                     int* nan_flag, void* stream);
extern "C" const char* jmlr_topk_cuda_error_string(int err);

namespace {

constexpr int kWarps = 8;  // must match topk_cuda.cu

std::vector<at::Tensor> topk_cuda(const at::Tensor& queries, const at::Tensor& docs,
                                  const c10::optional<at::Tensor>& scales, int64_t k, int64_t docs_per_tile,
                                  int64_t stream) {
  TORCH_CHECK(queries.is_cuda() && docs.is_cuda(), "queries and docs must be CUDA tensors");
  TORCH_CHECK(queries.dim() == 2 && docs.dim() == 2, "queries (B, d) and docs (N, d) must be 2-D");
  TORCH_CHECK(queries.scalar_type() == at::kFloat && queries.is_contiguous(), "queries must be contiguous float32");
  TORCH_CHECK(docs.stride(1) == 1, "docs rows must be contiguous");
  TORCH_CHECK(queries.size(1) == docs.size(1), "dimension mismatch: queries d=", queries.size(1),
              " docs d=", docs.size(1));
  const int64_t B = queries.size(0), d = queries.size(1), N = docs.size(0);
  TORCH_CHECK(k >= 1 && k <= 128 && k <= N, "the CUDA kernel supports 1 <= k <= min(128, N), got k=", k);
  TORCH_CHECK(N < (int64_t)INT32_MAX && B < (int64_t)INT32_MAX, "N and B must fit in int32");
  int dtype = -1;
  switch (docs.scalar_type()) {
    case at::kFloat: dtype = 0; break;
    case at::kBFloat16: dtype = 1; break;
    case at::kHalf: dtype = 2; break;
    case at::kChar: dtype = 3; break;
    default: TORCH_CHECK(false, "docs must be float32, bfloat16, float16 or int8, got ", docs.scalar_type());
  }
  const float* S = nullptr;
  if (scales.has_value()) {
    TORCH_CHECK(scales->is_cuda() && scales->scalar_type() == at::kFloat && scales->is_contiguous() &&
                    scales->numel() == N,
                "scales must be a contiguous CUDA float32 (N,) tensor");
    S = scales->data_ptr<float>();
  }
  TORCH_CHECK(dtype != 3 || S != nullptr, "int8 docs need scales");
  docs_per_tile = std::max<int64_t>(docs_per_tile, kWarps);
  const int64_t tiles = (N + docs_per_tile - 1) / docs_per_tile;
  auto out_s = at::empty({B, tiles * kWarps * k}, queries.options());
  auto out_i = at::empty({B, tiles * kWarps * k}, queries.options().dtype(at::kLong));
  auto nan = at::zeros({1}, queries.options().dtype(at::kInt));
  const int err = jmlr_topk_cuda_launch(dtype, queries.data_ptr<float>(), docs.data_ptr(), S, (int)B, (int)N, (int)d,
                                        docs.stride(0), (int)docs_per_tile, (int)k, out_s.data_ptr<float>(),
                                        out_i.data_ptr<int64_t>(), nan.data_ptr<int>(),
                                        reinterpret_cast<void*>(stream));
  TORCH_CHECK(err == 0, "jmlr top-k CUDA launch failed: ", jmlr_topk_cuda_error_string(err));
  // stage 2: merge the per-tile candidates
  auto top = at::topk(out_s, k, /*dim=*/1, /*largest=*/true, /*sorted=*/true);
  auto idx = out_i.gather(1, std::get<1>(top));
  return {std::get<0>(top), idx, nan};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "jmlr fused score + top-k CUDA kernel";
  m.def("topk", &topk_cuda, "stage-1 tile candidates + stage-2 merge", py::arg("queries"), py::arg("docs"),
        py::arg("scales"), py::arg("k"), py::arg("docs_per_tile"), py::arg("stream"));
}
