"""A reduced town on a real 3-node RabbitMQ cluster: 5 gateways with overlapping coverage, 300 sensors,
one broker node killed -9 mid-run and restarted, one gateway killed -9 and restarted, a sixth gateway
added mid-run. After de-duplication by item id the platform has every heard frame exactly once."""

from __future__ import annotations

import pytest

from scripts.fleet import parser, run_town

pytestmark = pytest.mark.slow


def test_a_town_delivers_every_heard_frame_exactly_once_through_a_node_and_a_gateway_killed():
    args = parser().parse_args(["--gateways", "5", "--sensors", "300", "--interval", "20", "--duration", "60",
                                "--kill-node-at", "15", "--node-down", "15", "--kill-gateway-at", "25",
                                "--add-gateway-at", "35", "--health-every", "10", "--settle", "120"])
    figures = run_town(args)

    assert figures["frames_heard"] > 800
    assert figures["missing_at_platform"] == 0, (figures["events"], figures["missing_sample"])  # nothing lost
    assert figures["extra_at_platform"] == 0  # nothing the sensors did not send
    assert figures["unique_readings_at_platform"] == figures["frames_heard"]
    assert figures["duplicates_removed"] > 0  # overlapping coverage made copies, and they were dropped
    assert figures["gateways_with_health_at_platform"] == 6  # the added gateway reports too
    # The gateways that had the killed node first in their list moved to another (and the killed
    # gateway's log holds its predecessor's lines too, without a failover).
    assert sum(g["uplink_failovers"] for g in figures["per_gateway"].values()) >= 2
    added = figures["per_gateway"]["gw-06"]
    assert added["heard"] > 0 and added["accepted"] == added["heard"]
    session = [q for q in figures["platform_queues"] if "fleet-platform" in q[0]]
    assert session and session[0][1:3] == ["quorum", "true"]  # the platform's session is replicated
