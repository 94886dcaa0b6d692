"""MS lesion models, phantoms and pipelines behind the msapp MONAI Label server application."""

__version__ = "0.1.0"
