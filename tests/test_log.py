"""The daemon's log lines: what a maintainer reading the journal of a field gateway gets."""

from __future__ import annotations

import json

import structlog

from edgegw.log import configure


def test_an_exception_in_a_json_log_line_carries_its_traceback(capsys):
    saved = structlog.get_config()
    try:
        configure("info", "json")
        try:
            {}["missing"]
        except KeyError:
            structlog.get_logger("test").exception("commit failed; group dropped", events=3)
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    finally:
        structlog.configure(**saved)
    assert line["event"] == "commit failed; group dropped" and line["events"] == 3
    assert "Traceback" in line["exception"] and "KeyError: 'missing'" in line["exception"]
