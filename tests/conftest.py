from pathlib import Path

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


@pytest.fixture(autouse=True, scope="session")
def demo_key():
    """The demo box trap's key, as the README's set-up command makes it (edgegw keys new)."""
    from edgegw.config import load_config
    from edgegw.keys import load_keys, new_key

    config, _ = load_config(Path(__file__).parent.parent / "configs" / "demo.toml", keys=False)
    assert config.keys_file is not None
    if not config.keys_file.exists() or "trap-shrine" not in load_keys(config.keys_file):
        config.keys_file.parent.mkdir(parents=True, exist_ok=True)
        new_key(config.keys_file, "trap-shrine")
