"""btxrd-cam: explain a BTXRD bone-tumour radiograph classifier with class-activation maps."""

__version__ = "0.3.0"
