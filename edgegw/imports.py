"""Import a library without optional extras it would load and the gateway never uses.

paho-mqtt loads dnspython, when installed, for DNS SRV lookups the gateway never makes: 2.6 MB of a
Pi Zero's 512 MB. The extras are hidden for the duration of the import only, so code that wants
them later (a driver, a test library) still gets them.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def import_without(module: str, *unused: str) -> ModuleType:
    """Import ``module`` as if the top-level packages ``unused`` were not installed."""
    hidden = [m for m in unused if m not in sys.modules]
    sys.modules.update(dict.fromkeys(hidden))  # type: ignore[arg-type]  # None in sys.modules makes an import raise ImportError
    try:
        return importlib.import_module(module)
    finally:
        for m in hidden:
            del sys.modules[m]
