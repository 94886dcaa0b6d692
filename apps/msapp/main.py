"""msapp: the MONAI Label app for MS MRI. Wiring only; everything else lives in the mslesion package."""

import logging
import os
import sys
from pathlib import Path

_LIB = Path(__file__).resolve().parents[2] / "lib"
if _LIB.is_dir() and str(_LIB) not in sys.path:
    sys.path.insert(0, str(_LIB))
# Training runs in a subprocess that MONAI Label starts with this PYTHONPATH (and fails without one).
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(_LIB)) if p)

from monailabel.config import settings  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.utils.others.generic import strtobool  # noqa: E402

from mslesion import __version__, studycache  # noqa: E402
from mslesion.server import api, trainstats  # noqa: E402
from mslesion.server.datastore import ValidatingDatastore  # noqa: E402
from mslesion.server.leases import LEASES  # noqa: E402
from mslesion.server.strategies import (  # noqa: E402
    FirstStrategy,
    FlipUncertaintyScoring,
    RandomStrategy,
    ReviewStrategy,
    UncertaintyStrategy,
)
from mslesion.studies import BASELINE, StudyError, resolve_baseline, resolve_sequences  # noqa: E402
from mslesion.tasks import TASKS  # noqa: E402
from mslesion.tasks.enhancement_prediction import remember_prediction  # noqa: E402
from mslesion.vocabulary import APP_LABELS  # noqa: E402

logger = logging.getLogger(__name__)


class MSApp(MONAILabelApp):
    """Conf options (``--conf KEY VALUE``): models (comma list, default all), model_dir (where training
    publishes, default <app>/model), <task>_weights (your own default weights), uncertainty_candidates,
    study_cache_mb (decoded studies kept between requests, default 512, 0 = off); with
    ``--studies http(s)://.../dicom-web``: sequence_patterns, dicomweb_cache (docs/ohif.md)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        self.model_dir = conf.get("model_dir") or os.path.join(app_dir, "model")
        studycache.configure(conf.get("study_cache_mb"))  # decoded studies kept between requests (0: none)
        wanted = [m.strip() for m in conf.get("models", "all").split(",") if m.strip()]
        unknown = [m for m in wanted if m != "all" and m not in TASKS]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown} in --conf models; available: {', '.join(TASKS)}")
        self.configs = {}
        for name, config_class in TASKS.items():
            if "all" in wanted or name in wanted:
                config = config_class()
                config.init(name, self.model_dir, conf, None)
                self.configs[name] = config
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="msapp",
            labels=list(APP_LABELS),  # Slicer numbers a FLAIR's segments by this order: 1 MS lesion, 2 new MS lesion
            description="Multiple sclerosis lesion segmentation with active learning (phantom-trained defaults)",
            version=__version__,
        )

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):  # a DICOMweb server (PACS, Orthanc): OHIF's path
            from mslesion.dicom.datastore import open_datastore_from_conf

            return open_datastore_from_conf(self.studies, self.conf, settings)
        return ValidatingDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self):
        infers = {name: config.infer() for name, config in self.configs.items()}
        if "new_lesion" in infers:  # include_all_lesions marks flair_lesion's other lesions beside the new ones
            infers["new_lesion"].all_lesions = infers.get("flair_lesion")
        return infers

    def init_trainers(self):
        return {name: config.trainer() for name, config in self.configs.items()}

    def _uncertainty_scoring(self):
        if "flair_lesion" not in self._infers:
            return None
        if not hasattr(self, "_flair_scoring"):
            self._flair_scoring = FlipUncertaintyScoring(self._infers["flair_lesion"], key="flair_lesion_uncertainty")
        return self._flair_scoring

    def init_strategies(self):
        LEASES.seconds = float(self.conf.get("sample_lease_s", LEASES.seconds))  # Next Sample holds a study this long
        strategies = {"random": RandomStrategy(), "first": FirstStrategy()}
        scoring = self._uncertainty_scoring()
        if scoring:
            candidates = int(self.conf.get("uncertainty_candidates", 8))
            strategies["uncertainty"] = UncertaintyStrategy(scoring, max_candidates=candidates)
            strategies["review"] = ReviewStrategy(self._infers["flair_lesion"], max_candidates=candidates)
        return strategies

    def init_scoring_methods(self):
        scoring = self._uncertainty_scoring()
        return {"flair_lesion_uncertainty": scoring} if scoring else {}

    def check_model(self, model: str):
        if model not in self._infers:
            raise StudyError(404, f"There is no model '{model}'; available: {', '.join(self._infers)}.")
        config = self.configs[model]
        if not any(os.path.exists(path) for path in config.path):  # never answer from random weights
            raise StudyError(
                503,
                f"{model} has no weights: neither {config.path[0]} nor a fine-tuned {config.path[-1]} exists. "
                f"Create the defaults with `python -m mslesion.pretrain {model}` or train it (POST /train/{model}).",
            )
        return config

    def check_trainable(self, model: str):
        if model not in self._trainers:
            raise StudyError(404, f"There is no trainer '{model}'; available: {', '.join(self._trainers)}.")
        self._trainers[model].check_ready(self.datastore())

    def info(self):
        """Stock info, with training stats the GUIs can read: their keys, and the running trainer's first."""
        meta = super().info()
        meta["train_stats"] = trainstats.for_clients(meta.get("train_stats") or {}, api.running_training())
        return meta

    def infer(self, request, datastore=None):
        config = self.check_model(request.get("model", ""))
        image = request.get("image")
        if isinstance(image, str) and not os.path.exists(image) and not request.get("sequences"):
            recipe = config.recipe
            request = dict(request)
            store = datastore or self.datastore()
            request["sequences"] = resolve_sequences(store, image, config.name, recipe.inputs[0], recipe.inputs[1:])
            if recipe.longitudinal:
                request["sequences"][BASELINE] = resolve_baseline(
                    store, image, config.name, request.get("baseline") or None,
                    force=strtobool(str(request.get("force_baseline") or False)),
                )
        result = super().infer(request, datastore)
        if config.name == "enhancement_prediction" and isinstance(image, str) and not os.path.exists(image):
            remember_prediction(datastore or self.datastore(), image, result)  # where a GUI user can read it
        return result

    def next_sample(self, request):
        strategy = request.get("strategy") or "random"
        if strategy not in self._strategies:
            raise StudyError(404, f"There is no strategy '{strategy}'; available: {', '.join(self._strategies)}.")
        return super().next_sample(request)

    def on_init_complete(self):
        super().on_init_complete()
        server = sys.modules.get("monailabel.app")
        if server is not None:
            api.install(server.app, self)
