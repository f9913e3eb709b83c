import pytest

from edgegw.radio.emulator import RylrEmulator
from tests.broker import mosquitto, persistent_mosquitto  # noqa: F401  (fixtures: a real Mosquitto on a free loopback port)


@pytest.fixture
def unplugged(tmp_path):
    """An emulated RYLR module whose pty does not exist yet (plug() creates it); unplugged at teardown."""
    emulator = RylrEmulator(tmp_path / "ttyLORA0")
    yield emulator
    emulator.unplug()


@pytest.fixture
def emulator(unplugged):
    """An emulated RYLR module, plugged: its pty is reachable at ``emulator.link``."""
    unplugged.plug()
    return unplugged
