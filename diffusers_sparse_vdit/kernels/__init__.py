"""Block-sparse attention over a :class:`~diffusers_sparse_vdit.plan.SparsePlan`.

``sparse_attention(q, k, v, plan)`` is the one entry point; the backends beside it are
interchangeable implementations of the same function:

* ``"gluon"``: our warp-specialized Hopper kernel (:mod:`.gluon_sparse`), H100/H200, 16-bit, head_dim
  64/128; ``"auto"`` takes it wherever it runs;
* ``"triton"``: our single-loop fused kernel (:mod:`.triton_sparse`), any CUDA GPU, or CPU under
  ``TRITON_INTERPRET=1``;
* ``"torch"``: the plain-PyTorch reference (:mod:`.reference`), any device, memory bounded;
* ``"flex"``: FlexAttention with a BlockMask built from the same tile lists (:mod:`.flex`);
* ``"fa4"``: FlashAttention-4's block-sparse kernel on the same tile lists (:mod:`.fa4`), SM90/SM100,
  extra ``[fa4]``; ``"auto"`` takes it on Blackwell, where the Gluon kernel does not run.
"""

from .attention import sparse_attention

__all__ = ["sparse_attention"]
