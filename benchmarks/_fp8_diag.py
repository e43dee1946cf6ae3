import sys, torch
sys.path.insert(0, ".")
from diffusers_sparse_vdit import build_plan
from diffusers_sparse_vdit.kernels.gluon_fp8 import sparse_attention_gluon_fp8
from tests.kernels.gpu_cases import LAYOUTS, MIXED
i, hd = int(sys.argv[1]), int(sys.argv[2])
layout = LAYOUTS[i]
plan = build_plan(MIXED, layout, precision="fp8")
q, k, v = (torch.randn(2, len(MIXED), layout.num_tokens, hd, device="cuda", dtype=torch.bfloat16) for _ in range(3))
out = torch.full_like(q, float("nan"))
sparse_attention_gluon_fp8(q, k, v, plan, scale=hd ** -0.5, out=out)
torch.cuda.synchronize()
print(layout, hd, "ok, nan:", out.isnan().any().item())
