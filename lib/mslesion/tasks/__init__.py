"""One module per model: its TaskConfig, InferTask and TrainTask. ``TASKS`` is what the app registers."""

from .flair_lesion import FlairLesion

TASKS = {"flair_lesion": FlairLesion}
