"""The longitudinal input of new_lesion: what the network reads, and when to distrust the registration it rests on."""

import pytest
import torch
from monai.transforms import Compose

from mslesion.unet.longitudinal import unreliable
from mslesion.unet.phantom_items import cohort_items
from mslesion.unet.recipes import FLAIR_LESION, NEW_LESION, input_channels
from mslesion.unet.transforms import IMAGE, LABEL, preprocess


def test_a_registration_that_did_not_align_is_flagged():
    assert not unreliable(0.85, 0.97)  # a real pair of visits
    assert not unreliable(1.0, 0.9999)  # already aligned: jitter, not failure
    assert unreliable(0.6, 0.4)  # made worse
    assert unreliable(0.02, 0.03)  # "improved", but still nothing alike (another head, noise)


@pytest.fixture(scope="module")
def follow_up(tmp_path_factory):
    """One MS phantom follow-up with its baseline, through new_lesion's training preprocessing, and the follow-up
    alone through flair_lesion's."""
    items = cohort_items(tmp_path_factory.mktemp("pair"), "ms", 1, 3, 1, NEW_LESION)
    assert len(items) == 1
    paired = Compose(preprocess(NEW_LESION, with_label=True))(items[0])
    alone = Compose(preprocess(FLAIR_LESION, with_label=True))({IMAGE: items[0][IMAGE], LABEL: items[0][LABEL]})
    return paired, alone


def test_new_lesion_reads_the_follow_up_and_the_registered_subtraction(follow_up):
    """Channel 0 is the follow-up as flair_lesion sees it (so flair_lesion's weights transfer); channel 1 is bright
    on the new lesions (label 2 -> mask) and near zero elsewhere in the head, where both visits show the same."""
    paired, alone = follow_up
    image, new = paired[IMAGE], paired[LABEL][0] > 0
    assert image.shape[0] == input_channels(NEW_LESION) == 2
    assert torch.allclose(image[0], alone[IMAGE][0])
    head = image[0] > -1.0
    assert new.sum() > 30, "the fixture's follow-up should have a new lesion; pick another seed"
    subtraction = image[1]
    assert float(subtraction[new].mean()) > 1.0
    assert float(subtraction[head & ~new].abs().median()) < 0.3
