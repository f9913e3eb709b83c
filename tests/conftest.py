from tests.broker import mosquitto  # noqa: F401  (fixture: a real Mosquitto on a free loopback port)
