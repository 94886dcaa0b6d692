"""Synthetic multi-sequence MS studies and non-MS pretraining cohorts on real (MNI152) anatomy.

Everything is generated locally from the template that ships inside nilearn; nothing is downloaded.
See docs/phantoms.md for the models and the conventions of labels and metadata.
"""

from .options import COHORTS, SEQUENCES, PhantomOptions
from .session import PhantomSession
from .subject import make_subject
from .writer import write_cohort

__all__ = ["SEQUENCES", "COHORTS", "PhantomOptions", "PhantomSession", "make_subject", "write_cohort"]
