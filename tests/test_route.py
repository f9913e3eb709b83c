"""Routing per uplink: the pure mask function (hypothesis), and config check naming routes that take nothing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgegw.route import EVERYTHING, ITEM_KINDS, Route, Routing
from tests.test_config import minimal, problems_of, unplaced, write

DEVICE_IDS = ("trap-01", "river-01", "river-02", "paddy-07")
ALARM_KINDS = ("trap_sprung", "trap_reminder", "water_level_alarm", "water_rise", "battery_low")

facet = lambda values: st.none() | st.frozensets(st.sampled_from(values), min_size=1)  # noqa: E731
routes = st.builds(Route, facet(ITEM_KINDS), facet(ALARM_KINDS), facet(DEVICE_IDS))
items = st.tuples(st.sampled_from(ITEM_KINDS), st.none() | st.sampled_from(DEVICE_IDS),
                  st.none() | st.sampled_from(ALARM_KINDS)).map(
    lambda t: (t[0], t[1], t[2] if t[0] == "alarm" else None))


@given(st.lists(routes, min_size=1, max_size=6), st.lists(items, min_size=1, max_size=20))
def test_a_mask_holds_exactly_the_bits_of_the_routes_that_take_the_item(rs, its):
    routing = Routing({1 << i: r for i, r in enumerate(rs)})
    for kind, device, alarm in its * 2:  # asked twice: the cached answer is the same
        mask = routing.mask(kind, device, alarm)
        assert mask == sum(1 << i for i, r in enumerate(rs) if r.takes(kind, device, alarm))
        if kind == "reading" and device is not None:
            assert routing.reading(device) == mask
        for i in range(len(rs)):
            assert routing.others(1 << i, kind, device, alarm) == mask & ~(1 << i)


@given(routes, items)
def test_each_facet_narrows_only_what_it_names(route, item):
    kind, device, alarm = item
    assert EVERYTHING.takes(kind, device, alarm)
    if route.takes(kind, device, alarm):
        assert route.kinds is None or kind in route.kinds
        assert kind != "alarm" or route.alarms is None or alarm in route.alarms
        assert device is None or route.devices is None or device in route.devices
    # Alarm kinds do not narrow other items; device ids do not narrow the gateway's own items.
    if kind != "alarm":
        assert Route(route.kinds, None, route.devices).takes(*item) == route.takes(*item)
    if device is None:
        assert Route(route.kinds, route.alarms, None).takes(*item) == route.takes(*item)


@given(st.sampled_from(DEVICE_IDS), facet(ALARM_KINDS))
def test_an_alarms_only_route_never_takes_a_plain_reading(device, alarms):
    routing = Routing({1: EVERYTHING, 2: Route(frozenset({"alarm"}), alarms, None)})
    assert routing.reading(device) == 1
    assert routing.mask("health") == 1


DEVICES = """
[[devices]]
id = "trap-01"
address = 17
driver = "trap"

[[devices]]
id = "river-01"
address = 21
driver = "water_level"
"""


def test_config_check_names_a_route_with_an_unknown_device(tmp_path):
    path = write(tmp_path, minimal(DEVICES + """
[[uplinks]]
type = "file"
route = { devices = ["river-01", "river-9"] }
"""))
    assert unplaced(problems_of(path)) == [
        "uplinks[0].route.devices: unknown device(s) 'river-9' (did you mean 'river-01'?);"
        " configured devices: trap-01, river-01"]


def test_config_check_names_a_route_that_takes_nothing(tmp_path):
    # Water level alarms of the trap only: no water rule watches the trap (nor, here, anything).
    path = write(tmp_path, minimal(DEVICES + """
[[uplinks]]
type = "file"
name = "river-office"
route = { kinds = ["alarm"], alarms = ["water_level_alarm"], devices = ["trap-01"] }

[[uplinks]]
type = "sigfox"
port = "/dev/ttyUSB1"
alarms = { water_rise = { when = "always" } }
"""))
    problems = unplaced(problems_of(path))
    assert len(problems) == 2
    assert problems[0].startswith("uplinks[name=river-office].route: uplink 'river-office' would take nothing")
    assert problems[1].startswith("uplinks[1].route: uplink 'sigfox' would take nothing")
    assert "alarms table" in problems[1]


def test_a_sigfox_uplink_refuses_readings_in_its_route(tmp_path):
    path = write(tmp_path, minimal(DEVICES + """
[[uplinks]]
type = "sigfox"
port = "/dev/ttyUSB1"
route = { kinds = ["alarm", "reading"] }
"""))
    [problem] = unplaced(problems_of(path))
    assert problem.startswith("uplinks[0]: route.kinds: a Sigfox module carries alarms only")


def test_a_sigfox_uplink_needs_a_port_or_simulate_and_at_most_four_downlinks_a_day(tmp_path):
    path = write(tmp_path, minimal(DEVICES + """
[[uplinks]]
type = "sigfox"
confirm_every = "1h"
daily_limit = 141
"""))
    problems = unplaced(problems_of(path))
    assert "uplinks[0].daily_limit: Input should be less than or equal to 140 (got 141)" in problems
    path = write(tmp_path, minimal(DEVICES + """
[[uplinks]]
type = "sigfox"
confirm_every = "1h"
"""))
    [problem] = unplaced(problems_of(path))
    assert problem.startswith("uplinks[0]: expected either port")
