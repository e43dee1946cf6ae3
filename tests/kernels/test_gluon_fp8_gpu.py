"""The FP8 Hopper kernel (Gluon) on the GPU: against its torch simulation and the fp32 dense-mask reference."""

import pytest
import torch
import torch.nn.functional as F

from diffusers_sparse_vdit import TokenLayout, build_plan, sparse_attention
from diffusers_sparse_vdit.kernels import gluon_fp8, gluon_sparse, quantize
from diffusers_sparse_vdit.kernels.attention import fp8_supported

from .gpu_cases import LAYOUTS, MIXED, rel_err

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                       reason="the FP8 Gluon kernel runs on Hopper GPUs"),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_fp8_kernel_matches_its_simulation_and_the_fp32_reference(layout, head_dim, dtype):
    plan = build_plan(MIXED, layout, precision="fp8")
    shape = (2, layout.num_tokens, len(MIXED), head_dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=dtype).transpose(1, 2) for _ in range(3))
    k = k + 2.0  # a shared key offset: the smoothing must take it out
    lengths = torch.tensor([layout.text_tokens // 3, layout.text_tokens], device="cuda", dtype=torch.int32) \
        if layout.text_tokens else None
    assert fp8_supported(q, k, v, plan)
    out = torch.full_like(q, float("nan"))
    gluon_fp8.sparse_attention_gluon_fp8(q, k, v, plan, scale=head_dim ** -0.5, out=out, text_lengths=lengths)
    assert not out.isnan().any()
    assert (out[:, plan.skip_heads] == 0).all()
    keep = plan.fp8_heads
    simulated = sparse_attention(q, k, v, plan, backend="torch", text_lengths=lengths)
    mask = plan.dense_mask(lengths.cpu()) if lengths is not None else plan.dense_mask()
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask.cuda())
    # the simulation rounds P against each row's final max, the kernel against its running max: both
    # round to e4m3, at different points, so they differ by about one rounding; the kernel is as far
    # from exact as the simulation says
    assert rel_err(out[:, keep], simulated[:, keep].float()) < 3.5e-2
    simulated_err = rel_err(simulated[:, keep], ref[:, keep])
    assert rel_err(out[:, keep], ref[:, keep]) < 1.15 * simulated_err + 1e-3 and simulated_err < 8e-2


def test_auto_runs_each_precision_on_its_kernel(monkeypatch):
    layout = TokenLayout(3, 16, 20, text_tokens=40, text_position="after")
    precision = ("fp8", "native", "fp8", "native", "fp8", "fp8")
    plan = build_plan(MIXED, layout, precision=precision)
    q, k, v = (torch.randn(1, len(MIXED), layout.num_tokens, 128, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    calls = []
    for module, name in ((gluon_fp8, "sparse_attention_gluon_fp8"), (gluon_sparse, "sparse_attention_gluon")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name, **kw: calls.append((_n, a[3])) or _f(*a, **kw))
    out = sparse_attention(q, k, v, plan, backend="gluon")  # the custom op, as the processors call it
    by_kernel = {n: sorted(set(p.work[:, 0].tolist())) for n, p in calls}
    assert by_kernel["sparse_attention_gluon_fp8"] == plan.fp8_heads
    assert by_kernel["sparse_attention_gluon"] == [1, 3]  # the native heads (SKIP head 1 among them)
    native = sparse_attention(q, k, v, plan.with_precision("native"), backend="gluon")
    for h, p in enumerate(precision):
        if p == "native":
            assert torch.equal(out[:, h], native[:, h])
        else:
            assert 0 < rel_err(out[:, h], native[:, h].float()) < 8e-2


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("heads", [None, [0, 3, 4]], ids=["whole-plan", "restricted"])
def test_the_triton_quantizer_writes_what_the_pytorch_one_does(layout, heads):
    plan = build_plan(MIXED, layout)
    plan = plan.restrict_heads(heads) if heads else plan
    k, v = (torch.randn(2, layout.num_tokens, len(MIXED), 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
            for _ in range(2))
    k = k + 3.0
    mean, v_scale = quantize.kv_stats(k, v)
    got = quantize.kernel_kv(k, v, plan)
    want = quantize._kernel_kv_torch(k, v, plan, mean, v_scale)
    computed = plan.computed_heads  # the only heads either writes (the SKIP head 1 has nothing to quantize)
    assert computed == (heads or [0, 2, 3, 4, 5])
    for key in ("k_scale", "v_scale"):
        assert torch.allclose(got[key][:, computed], want[key][:, computed], rtol=1e-6), key
    for key in ("k8", "vt8"):
        a, b = got[key][:, computed].float(), want[key][:, computed].float()
        assert a.shape == b.shape and got[key].stride() == want[key].stride(), key
        assert (a != b).float().mean() < 1e-3 and torch.allclose(a, b, rtol=0.13, atol=2 ** -9), key  # 1 ulp at most
