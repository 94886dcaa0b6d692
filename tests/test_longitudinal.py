"""The longitudinal input of new_lesion: when to distrust the registration it rests on."""

from mslesion.unet.longitudinal import unreliable


def test_a_registration_that_did_not_align_is_flagged():
    assert not unreliable(0.85, 0.97)  # a real pair of visits
    assert not unreliable(1.0, 0.9999)  # already aligned: jitter, not failure
    assert unreliable(0.6, 0.4)  # made worse
    assert unreliable(0.02, 0.03)  # "improved", but still nothing alike (another head, noise)
