"""The training loop's optimizer steps: batch_size patches each, every loaded patch used once, pairs kept."""

import torch

from mslesion.unet.training import patch_batches
from mslesion.unet.transforms import IMAGE, LABEL


def test_a_loaded_batch_is_cut_into_steps_of_batch_size_patches():
    # 3 studies x 16 patches each, as the CPU schedule's loader collates them; image i carries i, its label 10 * i
    images = torch.arange(48, dtype=torch.float32).reshape(48, 1, 1, 1, 1).expand(48, 1, 2, 2, 2).clone()
    labels = 10 * images
    steps = list(patch_batches({IMAGE: images, LABEL: labels}, 4, torch.device("cpu")))
    assert [s[0].shape[0] for s in steps] == [4] * 12
    seen = torch.cat([s[0][:, 0, 0, 0, 0] for s in steps])
    assert sorted(seen.tolist()) == list(range(48))
    assert all(torch.equal(label, 10 * image) for image, label in steps)
    assert seen.tolist() != list(range(48))  # shuffled across the loaded studies


def test_the_last_step_takes_what_is_left():
    images = torch.zeros(10, 1, 2, 2, 2)
    steps = list(patch_batches({IMAGE: images, LABEL: images}, 4, torch.device("cpu")))
    assert [s[0].shape[0] for s in steps] == [4, 4, 2]
