"""TransFuse as a MONAI bundle: networks, losses, data and reports that the bundle configs instantiate."""

__version__ = "0.1.0"
