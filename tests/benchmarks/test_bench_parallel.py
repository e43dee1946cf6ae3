"""bench_parallel.py's CPU smoke run: two gloo processes, a tiny Wan, the table and the JSON."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo")
def test_tiny_run_writes_a_row_per_model(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "parallel.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), str(ROOT / "benchmarks" / "bench_parallel.py"), "--tiny", "--models", "wan",
               "--reps", "1", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "speedup" in done.stdout
    (row,) = json.loads(out.read_text())["rows"]
    assert row["model"] == "wan" and row["world_size"] == 2
    assert {"dense_1gpu_ms", "dense_cp_ms", "sparse_cp_ms", "sparse_cp_model_order_ms", "scaling_efficiency_sparse"} <= set(row)
    # FULL, FULL, SKIP, band: in model order rank 0 holds both FULL heads; balanced, one each
    assert row["rank_shares_model_order"][0] > 0.8
    assert max(row["rank_shares_balanced"]) < 0.6
