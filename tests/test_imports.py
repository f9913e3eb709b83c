"""The daemon stays lean: optional extras of its libraries are not loaded, and stay loadable."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_the_daemon_does_not_load_dnspython_sqlite_utils_rich_or_cryptography_before_a_key_is_used():
    loaded = run_python("import sys, edgegw.daemon, edgegw.uplink.mqtt, edgegw.rules.actions;"
                        " print(sorted({m.split('.')[0] for m in sys.modules}"
                        " & {'dns', 'sqlite_utils', 'pandas', 'cryptography', 'rich', 'pygments'}))")
    assert loaded == "[]"
    used = run_python("import sys; from edgegw.envelope import seal; seal(bytes(16), 1, 1, b'');"
                      " print('cryptography' in sys.modules)")
    assert used == "True"


def test_a_hidden_extra_can_still_be_imported_afterwards():
    pytest.importorskip("dns")  # the test tools bring dnspython; a field install may not have it
    assert run_python("import edgegw.uplink.mqtt, dns.resolver; print(dns.resolver.__name__)") == "dns.resolver"


def test_the_command_loads_no_daemon_store_uplink_or_sqlite_utils_before_a_command_needs_them():
    # The radio families are loaded (their config models live beside their code), not the rest.
    loaded = run_python("import sys, edgegw.cli; print(sorted(m for m in ('edgegw.daemon', 'edgegw.writer',"
                        " 'edgegw.forwarder', 'paho', 'sqlite_utils', 'edgegw.store') if m in sys.modules))")
    assert loaded == "[]"


def test_the_monitor_still_loads_rich_after_structlog_was_imported_without_it():
    assert run_python("import structlog, edgegw.cli.monitor as m, rich.live; print(rich.live.__name__)") == "rich.live"
