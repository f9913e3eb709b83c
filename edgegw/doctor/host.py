"""The machine itself: a daemon already on the data directory, the clock (a Pi has no RTC), and a
Pi's under-voltage and throttling."""

from __future__ import annotations

import shutil
import subprocess
import time

from edgegw.clock import kernel_synchronized, plausible
from edgegw.config import Config
from edgegw.doctor import Finding

TOOL_TIMEOUT = 3.0  # s for timedatectl and vcgencmd

# vcgencmd get_throttled bits (Raspberry Pi firmware documentation): now, and since boot.
THROTTLE_NOW = {0: "under-voltage", 1: "ARM frequency capped", 2: "throttled", 3: "soft temperature limit active"}
THROTTLE_SINCE_BOOT = {16: "under-voltage", 17: "ARM frequency capping", 18: "throttling",
                       19: "soft temperature limit"}
_POWER_FIX = ("use the official 5.1 V supply (or one rated 3 A for a Pi 4) and a short, thick cable;"
              " a voltage drop corrupts SD cards and resets USB radio modules")


def daemon_running(config: Config) -> Finding:
    """Whether an edgegw runs on the data directory (it holds the radio ports: doctor leaves them alone)."""
    from edgegw.running import daemon_state

    state = daemon_state(config.data_dir)
    subject = f"data_dir {config.data_dir}"
    if state.get("running"):
        return Finding("daemon", subject, "warning",
                       f"edgegw (pid {state.get('pid')}) runs on this data directory: it holds the radio ports,"
                       " so the modules were not talked to, and another daemon here would not start (exit 3)",
                       "to check the modules too: systemctl stop edgegw; edgegw doctor -c CONFIG; systemctl start"
                       " edgegw")
    if state.get("running") is None:
        return Finding("daemon", subject, "skipped", "cannot read the data directory's lock: whether a daemon runs"
                       " is unknown, so the modules were not talked to")
    return Finding("daemon", subject, "ok", "no edgegw runs on this data directory")


def clock(config: Config) -> Finding:
    """Whether the system clock is synchronised: timedatectl, or the kernel's adjtimex where there
    is no systemd."""
    if not plausible(time.time()):
        return Finding("clock", "system clock", "fault",
                       f"the clock says {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC: never set (a Pi has"
                       " no RTC); readings are held back until it is",
                       "give the gateway network to an NTP server (timedatectl set-ntp true; check that UDP 123"
                       " is not blocked)")
    synced, how = _ntp_synchronised()
    if synced is None:
        return Finding("clock", "system clock", "skipped", "cannot tell whether the clock is synchronised")
    if not synced:
        return Finding("clock", "system clock", "warning",
                       f"the clock is not synchronised ({how}): readings are stamped by a clock that may be"
                       " wrong (fake-hwclock boots a Pi at its last shutdown's time), and unsent ones are"
                       " re-stamped once it is; " + (
                           f"this boot's are held until then, up to {config.clock.await_sync / 60:g} min after boot"
                           " ([clock] await_sync)" if config.clock.await_sync else
                           "set [clock] await_sync to hold them until then"),
                       "timedatectl set-ntp true, and check that the gateway reaches an NTP server"
                       " (timedatectl timesync-status)")
    return Finding("clock", "system clock", "ok", f"synchronised ({how})")


def _ntp_synchronised() -> tuple[bool | None, str]:
    tool = shutil.which("timedatectl")
    if tool is not None:
        try:
            out = subprocess.run([tool, "show", "-p", "NTPSynchronized", "--value"], check=False, capture_output=True,
                                 text=True, timeout=TOOL_TIMEOUT)
            if out.returncode == 0 and out.stdout.strip() in ("yes", "no"):
                return out.stdout.strip() == "yes", "timedatectl NTPSynchronized=" + out.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass  # no systemd here (a container): ask the kernel
    synced = kernel_synchronized()
    return synced, "" if synced is None else f"adjtimex {'synchronised' if synced else 'TIME_ERROR'}"


def throttling() -> list[Finding]:
    """A Pi's under-voltage and throttling, from ``vcgencmd get_throttled``; nothing where there is no
    vcgencmd (not a Pi)."""
    tool = shutil.which("vcgencmd")
    if tool is None:
        return []
    try:
        out = subprocess.run([tool, "get_throttled"], check=False, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
        bits = int(out.stdout.strip().partition("=")[2], 16)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return [Finding("power", "Raspberry Pi", "skipped", "vcgencmd get_throttled gave no answer")]
    return [power(bits)]


def power(bits: int) -> Finding:
    """The finding for a ``get_throttled`` value: a fault for what happens now, a warning for what
    happened since boot."""
    now = [what for bit, what in THROTTLE_NOW.items() if bits >> bit & 1]
    since = [what for bit, what in THROTTLE_SINCE_BOOT.items() if bits >> bit & 1]
    if now:
        return Finding("power", "Raspberry Pi", "fault", f"now: {', '.join(now)} (get_throttled {bits:#x})", _POWER_FIX)
    if since:
        return Finding("power", "Raspberry Pi", "warning",
                       f"since boot: {', '.join(since)} occurred (get_throttled {bits:#x})", _POWER_FIX)
    return Finding("power", "Raspberry Pi", "ok", f"no under-voltage or throttling since boot (get_throttled {bits:#x})")
