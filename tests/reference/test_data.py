import random

import torch

from diffusers_sparse_vdit.reference.data import (
    HELDOUT_PAIRS, calibration_captions, heldout_captions, render, sample_scene, vocabulary,
)


def test_training_never_draws_a_held_out_pair_and_every_held_out_caption_has_one():
    rng = random.Random(0)
    for _ in range(2000):
        scene = sample_scene(rng)
        assert not any((t.colour, t.shape) in HELDOUT_PAIRS for s in scene.shots for t in s.things)
    for caption in heldout_captions(16):
        assert any(f"{c} {s}" in caption for c, s in HELDOUT_PAIRS), caption
    assert not set(heldout_captions()) & set(calibration_captions())


def test_captions_use_only_the_vocabulary_and_are_seeded():
    words = set(vocabulary())
    for caption in calibration_captions(32) + heldout_captions(32):
        assert set(caption.split()) <= words, caption
    assert calibration_captions() == calibration_captions() and heldout_captions() != calibration_captions()


def test_render_draws_moving_objects_in_range():
    rng = random.Random(3)
    scenes = [sample_scene(rng, static_probability=0.0) for _ in range(4)]
    video = render(scenes, 9, 32, 32)
    assert video.shape == (4, 3, 9, 32, 32) and video.min() >= -1 and video.max() <= 1
    assert (video[:, :, 0] - video[:, :, -1]).abs().amax(dim=(1, 2, 3)).min() > 0.1  # something moved
    assert torch.equal(video, render(scenes, 9, 32, 32))
