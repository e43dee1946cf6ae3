"""Run by tests/search/test_runner.py under `accelerate launch --cpu --num_processes 2`."""

import sys

import torch
from accelerate import Accelerator

from diffusers_sparse_vdit.search import calibrate
from diffusers_sparse_vdit.testing import tiny_pipeline

torch.set_num_threads(1)
accelerator = Accelerator(cpu=True)
pipe = tiny_pipeline("wan")
scores = calibrate(pipe, ["a cat walks", "a dog runs", "the city at night"], num_inference_steps=2, height=32, width=48,
                   num_frames=9, tile_size=16, sample_tiles=4, backend="torch", accelerator=accelerator, progress=False,
                   pipeline_kwargs={"max_sequence_length": 16})
if accelerator.is_main_process:
    scores.save(sys.argv[1])
