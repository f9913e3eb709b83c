"""Bundled device drivers, one module per device family (installed as ``edgegw_drivers``)."""
