"""One module per model: its TaskConfig, InferTask and TrainTask. ``TASKS`` is what the app registers."""

from .enhancement import Enhancement
from .enhancement_prediction import EnhancementPrediction
from .flair_lesion import FlairLesion
from .new_lesion import NewLesion

TASKS = {"flair_lesion": FlairLesion, "new_lesion": NewLesion, "enhancement": Enhancement,
         "enhancement_prediction": EnhancementPrediction}
