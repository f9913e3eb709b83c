"""edgegw: a field gateway for LPWA sensor networks.

Data flows one way: radio source -> driver -> store (outbox) -> forwarder -> uplink.
"""

from edgegw.imports import import_without

__version__ = "0.1.0"

# structlog loads rich, when installed, for its console's tracebacks: 4 MB of the daemon's memory,
# and pygments with it. rich is here for `edgegw monitor`, which imports it when it runs.
import_without("structlog", "rich", "better_exceptions")
