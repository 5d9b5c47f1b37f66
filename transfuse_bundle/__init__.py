"""TransFuse as a MONAI bundle: networks, losses, data and reports that the bundle configs instantiate."""

__version__ = "0.1.0"

from .errors import install_excepthook as _install_excepthook

# the configs import this package before evaluating anything: refusals print one line, not MONAI's traceback
_install_excepthook()
