"""edgegw: a field gateway for LPWA sensor networks.

Data flows one way: radio source -> driver -> store (outbox) -> forwarder -> uplink.
"""

__version__ = "0.1.0"
