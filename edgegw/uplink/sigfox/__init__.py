"""A Sigfox module on the gateway: the alarm uplink of last resort (issue 21).

``codec``     the 12-byte alarm message, encoder and platform-side decoder (standard library only)
``module``    the Wisol WSSFM10R3 (RC3) over serial AT commands: identity, sends, downlinks, reopening
``budget``    the messages sent in the last 24 hours, in a small SQLite file of its own: survives restarts
``sender``    the uplink's forwarder: which alarms go, when, and in which order the budget is spent
``emulator``  the module on a pty, for the tests and the demo
"""
