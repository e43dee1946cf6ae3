"""Run by tests/processors/test_parallel.py under `torchrun --nproc_per_node 2`: tiny transformers under Ulysses.

Writes rank 0's outputs, one safetensors file per case, to the folder given as argument.
"""

import sys
from pathlib import Path
from unittest import mock

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig
from safetensors.torch import save_file

from diffusers_sparse_vdit import apply_sparse_vdit, context_parallel_plan

from tests.processors.parallel_cases import CASES, case_inputs, case_map, case_transformer

torch.set_num_threads(1)
dist.init_process_group("gloo")
out_dir = Path(sys.argv[1])
for name, case in CASES.items():
    transformer = case_transformer(case)
    config = ContextParallelConfig(ulysses_degree=dist.get_world_size())
    sparse = case.get("map", True)
    if sparse and not case.get("map_after"):
        apply_sparse_vdit(transformer, case_map(transformer, case), backend="torch", balance_heads=case["balance"])
    # diffusers places each rank on an accelerator (rank % device_count); the CPU has none
    with mock.patch("torch.accelerator.device_count", return_value=1):
        transformer.enable_parallelism(config=config, cp_plan=context_parallel_plan(transformer))
    if sparse and case.get("map_after"):
        apply_sparse_vdit(transformer, case_map(transformer, case), backend="torch", balance_heads=case["balance"])
    with torch.no_grad():
        outputs = {f"step{i}": transformer(**inputs)[0].contiguous() for i, inputs in enumerate(case_inputs(transformer, case))}
    if dist.get_rank() == 0:
        save_file(outputs, out_dir / f"{name}.safetensors")
dist.destroy_process_group()
