"""The Gluon kernels (16-bit and FP8) build for Hopper without a GPU: Triton compiles it for sm_90a here, so CI sees
what the H100/H200 would run (wgmma, the register split, no spills, shared memory that fits).

The build runs in a child process: under ``TRITON_INTERPRET=1`` (this suite's setting) Triton's own
library functions are interpreter objects that the compiler refuses.
"""

import inspect
import json
import os
import re
import subprocess
import sys

import pytest

HOPPER_SHARED_BYTES = 227 * 1024  # the most one block may take on an H100/H200
# head_dim, token-major heads in the plan, FP8 kernel
VARIANTS = [(d, g, f) for f in (False, True) for d in (64, 128) for g in (False, True)]
FP8_POINTERS = {"Q": "*bf16", "O": "*bf16", "K8": "*fp8e4nv", "VT8": "*fp8e4nv", "KS": "*fp32", "VS": "*fp32"}


def build(head_dim, gather, fp8):
    """Compile a kernel for sm_90a under its default config; what the tests read of the result."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    from diffusers_sparse_vdit.kernels import gluon_fp8, gluon_sparse

    if fp8:
        pointers, fn, config = FP8_POINTERS, gluon_fp8._sparse_attention_fp8_fwd, gluon_fp8.fp8_config(head_dim)
    else:
        pointers = dict.fromkeys(("Q", "K", "V", "O", "KP", "VP"), "*bf16")
        fn, config = gluon_sparse._sparse_attention_ws_fwd, gluon_sparse.gluon_config(head_dim)
    index_tensors = {"work", "kv_tiles", "row_maps", "head_order", "head_slot", "tile_lengths", "text_lengths"}
    params = list(inspect.signature(fn.fn).parameters)
    launch = {"num_warps": 4, "maxnreg": config.pop("maxnreg")}
    const = dict(HEAD_DIM=head_dim, TILE=128, GATHER=gather, HAS_TEXT_LENGTHS=True, **config)
    sig = {p: "constexpr" if p in const else pointers.get(p) or ("*i32" if p in index_tensors
           else "fp32" if p == "qk_scale" else "i32") for p in params}
    src = GluonASTSource(fn, sig, constexprs={(params.index(k),): v for k, v in const.items()},
                         attrs={(params.index(p),): [["tt.divisibility", 16]] for p in pointers})
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=launch)
    ptx = kernel.asm["ptx"]
    notes, sass = _ptxas(ptx)
    return {**_read_ptx(ptx), "shared": kernel.metadata.shared, "wgmma_serialized": notes,
            "exp_between_waits": _exp_between_waits(sass), "loop_shuffles": _shuffles(sass)}


def _ptxas(ptx: str) -> tuple[list[str], str]:
    """What ptxas says, compiling this PTX for sm_90a, about serializing the asynchronous wgmma products
    (a note the compile itself does not show; serialized, each product waits for the one before), and the SASS."""
    import tempfile

    from triton import knobs
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = os.path.join(tmp, "kernel.ptx"), os.path.join(tmp, "k.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        done = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", src, "-o", cubin],
                              capture_output=True, text=True, timeout=300)
        sass = subprocess.run([knobs.nvidia.cuobjdump.path, "-sass", cubin], capture_output=True, text=True,
                              timeout=120).stdout
    notes = [line.split("Potential Performance Loss: ")[-1] for line in (done.stdout + done.stderr).splitlines()
             if "wgmma.mma_async instructions are serialized" in line]
    return notes, sass


def _key_loops(sass: str) -> list[list[str]]:
    """The instructions of each key loop of the SASS: an innermost back-edge around wgmma products."""
    ins = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loops = [(int(m.group(1), 16), addr) for addr, text in ins
             if (m := re.search(r"BRA (0x[0-9a-f]+)", text)) and int(m.group(1), 16) < addr]
    loops = [(a, b) for a, b in loops if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)]
    bodies = [[text for addr, text in ins if start <= addr <= end] for start, end in loops]
    return [body for body in bodies if any("HGMMA" in t or "QGMMA" in t for t in body)]


def _exp_between_waits(sass: str) -> list[int]:
    """For each key loop, the exponentials (MUFU.EX2) scheduled after the loop's first partial wgmma wait
    (``WARPGROUP.DEPBAR.LE gsb0, 0x1``: QK done, PV still running) and before its full wait (``0x0``): the
    softmax work that overlaps the PV product inside one warpgroup."""
    counts = []
    for body in _key_loops(sass):
        between, count = None, 0
        for text in body:
            if "WARPGROUP.DEPBAR.LE gsb0, 0x1" in text and between is None:
                between = True
            elif "WARPGROUP.DEPBAR.LE gsb0, 0x0" in text and between:
                break
            elif between and "MUFU.EX2" in text:
                count += 1
        counts.append(count)
    return counts


def _shuffles(sass: str) -> list[float]:
    """Per key loop, the lane shuffles (SHFL) per key step: data moved between threads. A step starts one
    score product (its first ``wgmma`` zeroes the accumulator: ``!UPT``); the FP8 loop at head_dim 64 runs two."""
    return [sum("SHFL" in t for t in body) / max(1, sum("GMMA" in t and "!UPT" in t for t in body))
            for body in _key_loops(sass)]


def _read_ptx(ptx: str) -> dict:
    return {"ptx_wgmma": [line.split()[0] for line in ptx.splitlines() if "wgmma.mma_async" in line],
            "tma_loads": ptx.count("cp.async.bulk.tensor.2d"), "setmaxnreg": sorted(set(
                " ".join(line.rstrip(";").split()) for line in ptx.splitlines() if "setmaxnreg" in line)),
            "local_memory": ".local" in ptx}


@pytest.fixture(scope="module")
def builds():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {tuple(k): v for k, v in json.loads(done.stdout.splitlines()[-1])}


@pytest.mark.parametrize("head_dim,gather,fp8", VARIANTS, ids=[
    f"{'fp8' if f else 'bf16'}-hd{d}-{'gather' if g else 'frame-major'}" for d, g, f in VARIANTS])
def test_default_config_builds_for_hopper(builds, head_dim, gather, fp8):
    got = builds[(head_dim, gather, fp8)]
    # QK (n = 128 keys) and PV (n = head_dim) on the tensor cores, both from wgmma (FP8: k = 32, e4m3 operands)
    kind = "k32.f32.e4m3.e4m3" if fp8 else "k16.f32.bf16.bf16"
    assert any(f"m64n128{kind}" in w for w in got["ptx_wgmma"])
    assert any(f"m64n{head_dim}{kind}" in w for w in got["ptx_wgmma"])
    assert all(kind in w for w in got["ptx_wgmma"])  # no product left in 16 bits
    assert got["tma_loads"] >= 2  # K and V by TMA
    assert "setmaxnreg.inc.sync.aligned.u32 240" in " ".join(got["setmaxnreg"])  # consumers get the registers
    assert not got["local_memory"]  # nothing spilled
    assert got["shared"] <= HOPPER_SHARED_BYTES


@pytest.mark.parametrize("head_dim,gather,fp8", VARIANTS, ids=[
    f"{'fp8' if f else 'bf16'}-hd{d}-{'gather' if g else 'frame-major'}" for d, g, f in VARIANTS])
def test_the_matrix_products_stay_asynchronous(builds, head_dim, gather, fp8, request):
    if fp8 and head_dim == 128:  # NOTES v11, v16: ptxas serializes the FP8 loop unless it runs in pairs (hd 64 only)
        request.applymarker(pytest.mark.xfail(strict=True, reason="ptxas C7514 in the FP8 loop at hd 128 (NOTES v16)"))
    assert builds[(head_dim, gather, fp8)]["wgmma_serialized"] == []


@pytest.mark.parametrize("gather", [False, True], ids=["frame-major", "gather"])
def test_softmax_runs_beside_the_pv_product(builds, gather):
    """At head_dim 128 (gluon_config's SOFTMAX_IN_BRANCHES) the 16-bit kernel's exponentials of sub-tile i sit
    between the waits for QK(i) and PV(i - 1) in both consumers' key loops (NOTES v12: with them after the join
    of the mask branch, ptxas waited for PV first)."""
    counts = builds[(128, gather, False)]["exp_between_waits"]
    assert len(counts) >= 2 and all(c >= 64 for c in counts), counts  # 64 probabilities per thread per sub-tile


@pytest.mark.parametrize("head_dim,gather", [(d, g) for d in (64, 128) for g in (False, True)])
def test_fp8_probabilities_stay_in_their_threads(builds, head_dim, gather):
    """P goes from the scores' accumulator to the PV product's register operand by renaming registers
    (gluon_fp8._as_operand): each FP8 key loop shuffles only for its row max and row sum (two rows per
    thread, two butterfly steps each: 8) per key step, where a plain layout conversion adds 16 shuffles."""
    loops = builds[(head_dim, gather, True)]["loop_shuffles"]
    assert len(loops) >= 2 and all(shuffles <= 8 for shuffles in loops), loops


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    print(json.dumps([[list(v), build(*v)] for v in VARIANTS]))
