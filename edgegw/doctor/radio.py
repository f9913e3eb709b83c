"""The radio modules' serial ports: there, openable by the service user, and the module answering
with the configured baud rate and taking the configured settings (a Sigfox module: saying who it
is); an SX127x's SPI device, and the chip on it answering and taking its settings.

The module is talked to with its family's own configuration sequence (the one every start sends,
replies checked: :meth:`edgegw.radio.serial_line.LineModule.check`), so doctor and daemon cannot
disagree about what a module must answer.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from edgegw.config import Config, SigfoxUplink
from edgegw.doctor import Finding
from edgegw.doctor.access import READ, WRITE, ServiceUser, group_name

# Tried first when the module is silent at the configured rate: the vendors' defaults and the commonest settings.
COMMON_RATES = (115200, 9600, 19200, 57600, 38400)
SETTLE = 3.0  # s to wait for a source the running daemon is (re)opening to come up or go down
SCAN_TIMEOUT = 0.5  # s for an answer at each other rate: a module answers a command within milliseconds


def _serial_ports(config: Config) -> list[tuple[str, Any, str]]:
    """(subject, config section, port) of every serial port the config names."""
    out = [(f"sources[{i}] {s.name}", s, s.port) for i, s in enumerate(config.sources)
           if getattr(s, "port", None) is not None and s.type != "sx127x"]
    out += [(f"uplinks {u.name} (sigfox)", u, u.port) for u in config.uplinks
            if isinstance(u, SigfoxUplink) and u.port is not None]
    return out


def ports_here() -> list[str]:
    """The serial ports this machine has now, stable names first."""
    found = sorted(glob.glob("/dev/serial/by-id/*"))
    for pattern in ("/dev/ttyUSB*", "/dev/ttyACM*", "/dev/serial0", "/dev/ttyAMA*", "/dev/ttyS0"):
        found += sorted(glob.glob(pattern))
    return found


def ports(config: Config, user: ServiceUser, probe: bool) -> list[Finding]:
    """Each configured serial port: present, allowed to the service user, and (``probe``) its module
    answering. Simulated and SPI sources say they were skipped."""
    findings = []
    for i, source in enumerate(config.sources):
        subject = f"sources[{i}] {source.name}"
        if getattr(source, "simulate", None) is not None:
            findings.append(Finding("serial_port", subject, "skipped",
                                    f"simulated module (field file {source.simulate}): no port to check"))
        elif source.type == "sx127x":
            findings += spi_chip(subject, source, user, probe)
        elif getattr(source, "port", None) is None:
            findings.append(Finding("serial_port", subject, "skipped",
                                    f"{source.type} is not on a serial port; doctor does not talk to it"))
    for subject, section, port in _serial_ports(config):
        finding = port_access(subject, port, user)
        findings.append(finding)
        if probe and finding.status == "ok":
            findings.append(module(subject, section, port) if section in config.sources else sigfox(subject, section))
    return findings


def port_access(subject: str, port: str, user: ServiceUser, check: str = "serial_port") -> Finding:
    """The port exists and its mode bits let ``user`` read and write it."""
    try:
        st = os.stat(port)
    except FileNotFoundError:
        here = ports_here()
        listed = ", ".join(here) if here else "none (is the module plugged in? see dmesg)"
        return Finding(check, subject, "fault", f"serial port {port} does not exist",
                       f"plug the module in, or set port to one of this machine's serial ports: {listed}."
                       " Prefer the /dev/serial/by-id/... name: it stays the same when USB devices are re-plugged")
    except OSError as exc:
        return Finding(check, subject, "fault", f"cannot look at {port}: {exc.strerror}",
                       "check that the directories on the way to the port may be entered")
    if not user.may(st, READ | WRITE):
        group = group_name(st)
        fix = (f"add {user.name} to group {group}: sudo usermod -aG {group} {user.name} (then log in again,"
               " or restart the service)")
        if st.st_mode & 0o060 != 0o060:
            fix = (f"give group {group} read and write on the port (a udev rule with MODE=\"0660\"), and put"
                   f" {user.name} in it: sudo usermod -aG {group} {user.name}")
        return Finding(check, subject, "fault",
                       f"{user.name} may not open {port}: {user.why_not(st, READ | WRITE)}", fix)
    if user.uid == os.geteuid():
        # This process is the user asked about (the unit's ExecStartPre is): open it as the daemon
        # will. A port that is there but cannot be opened (a USB adapter half gone, a port another
        # program locked) fails here. Nothing is sent.
        try:
            os.close(os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK))
        except OSError as exc:
            return Finding(check, subject, "fault", f"{port} cannot be opened: {exc.strerror}",
                           "unplug the module and plug it in again; if another program uses the port, stop it"
                           " (see: fuser -v PORT)")
    return Finding(check, subject, "ok", f"{port} exists and {user.name} may open it")


def module(subject: str, source: Any, port: str) -> Finding:
    """Talk to the module on ``port`` with its configuration sequence; on silence, try its other
    baud rates to say which one it answers at."""
    import serial

    from edgegw.errors import ModuleError
    from edgegw.radio import ReadTurn
    from edgegw.radio.e220 import E220Radio
    from edgegw.radio.registry import build_source
    from edgegw.radio.serial_line import LineModule, ModuleSilent

    radio = build_source(source, port, ReadTurn())
    if isinstance(radio, E220Radio):
        return e220(subject, radio)
    if not isinstance(radio, LineModule):
        return Finding("radio_module", subject, "skipped", f"{source.type}: doctor does not talk to this module")
    try:
        took = radio.check()
    except ModuleSilent as exc:
        return _silent(subject, radio, source.baudrate, str(exc))
    except ModuleError as exc:
        return Finding("radio_module", subject, "fault", f"the module refused a setting: {exc}",
                       f"change that setting in [[sources]] {source.name} to one the module takes (see its"
                       " manual for the range), then run edgegw doctor again")
    except (serial.SerialException, OSError) as exc:
        return Finding("radio_module", subject, "fault", f"cannot open {port}: {exc}",
                       "another program may hold the port (see: fuser -v PORT), or the module was unplugged")
    if not took:
        return Finding("radio_module", subject, "warning",
                       "the module did not ask for its mode: it is already operating with the settings it saved"
                       " (commands now would be transmitted), or it is silent at this baud rate",
                       "to check it, power-cycle the module and run edgegw doctor again at once")
    return Finding("radio_module", subject, "ok",
                   f"the module answered at {source.baudrate} baud and took every setting"
                   f" ({'; '.join(radio.commands())})")


def sigfox(subject: str, uplink: Any) -> Finding:
    """Ask a Sigfox module who it is (AT, its id, its PAC), as its sender does at each open: nothing
    goes on the air, so nothing of the day's message budget is spent."""
    import serial

    from edgegw.errors import ModuleError
    from edgegw.uplink.sigfox.module import SigfoxModule

    module = SigfoxModule(uplink, uplink.port)
    try:
        identity = module.open()
    except ModuleError as exc:
        return Finding("sigfox_module", subject, "fault", f"the module does not answer as a WSSFM10R3: {exc}",
                       f"check that {uplink.port} is the Sigfox module's port (unplug it and see which port goes) and"
                       f" that it talks {uplink.baudrate} baud (the WSSFM10R3's is 9600)")
    except (serial.SerialException, OSError) as exc:
        return Finding("sigfox_module", subject, "fault", f"cannot open {uplink.port}: {exc}",
                       "another program may hold the port (see: fuser -v PORT), or the module was unplugged")
    finally:
        module.close()
    return Finding("sigfox_module", subject, "ok",
                   f"the module answered at {uplink.baudrate} baud: device id {identity.device_id} (its PAC read too;"
                   " both register it with the Sigfox operator); nothing was sent")


def e220(subject: str, radio: Any) -> Finding:
    """Configure an E220 through its mode pins as a start does (see E220Radio.check)."""
    import serial

    from edgegw.errors import ModuleError

    c = radio.config
    try:
        if not radio.check():
            return Finding("radio_module", subject, "skipped",
                           "mode_pins = false: the module is used with the settings it holds, which only its mode 3"
                           " can show")
    except ModuleError as exc:
        return _refused(subject, exc, f"check the module's power and the wiring of M0 (GPIO {c.m0_pin}), M1 (GPIO"
                                      f" {c.m1_pin}) and AUX (GPIO {c.aux_pin}), or set those pins in [[sources]]"
                                      f" {c.name} to where they are wired")
    except (serial.SerialException, OSError, RuntimeError) as exc:  # RuntimeError: RPi.GPIO's, for /dev/gpiomem
        return Finding("radio_module", subject, "fault", f"cannot use {radio.port} and the mode pins: {exc}",
                       "another program may hold the port (see: fuser -v PORT); the service user needs group gpio"
                       " for the mode pins: sudo usermod -aG gpio edgegw (then restart the service)")
    return Finding("radio_module", subject, "ok",
                   f"the module answered in mode 3 and holds the configured registers ({c.registers().hex(' ')}:"
                   f" channel {c.channel}, {c.frequency_mhz()} MHz, SF{c.spreading_factor})")


def spi_chip(subject: str, source: Any, user: ServiceUser, probe: bool) -> list[Finding]:
    """An SX127x's SPI device: allowed to the service user where it exists, and (``probe``) a chip
    on it that answers and takes its settings. Without ``probe`` a missing device is the finding."""
    path = source.port
    if os.path.exists(path):
        access = port_access(subject, path, user, "spi_device")
        if access.status != "ok" or not probe:
            return [access]
        return [access, chip(subject, source)]
    return [chip(subject, source)] if probe else [_no_spi(subject, path)]


def chip(subject: str, source: Any) -> Finding:
    """Open the SX127x's bus and configure it as a start does (see Sx127xRadio.check)."""
    from edgegw.errors import ModuleError
    from edgegw.radio.sx127x import Sx127xRadio

    try:
        return Finding("radio_module", subject, "ok", Sx127xRadio(source).check())
    except FileNotFoundError:
        return _no_spi(subject, source.port)
    except ModuleError as exc:
        return _refused(subject, exc, f"seat the HAT (or check the wiring: MOSI, MISO, SCK, NSS, RESET on GPIO"
                                      f" {source.reset_pin}), and set spi_cs in [[sources]] {source.name} to the chip"
                                      " select the chip is on")
    except (OSError, RuntimeError) as exc:  # RPi.GPIO says RuntimeError for /dev/gpiomem it may not open
        return Finding("radio_module", subject, "fault", f"cannot use {source.port} and its GPIO pins: {exc}",
                       "the service user needs groups spi and gpio: sudo usermod -aG spi,gpio edgegw (then restart"
                       " the service)")


def _refused(subject: str, exc: Exception, fix: str) -> Finding:
    """A module on the Pi's pins that failed its set-up: ``fix``, or the extra where it is missing."""
    missing = "not installed" in str(exc)  # edgegw.radio's ModuleError for the [pi] extra's modules
    return Finding("radio_module", subject, "fault", str(exc),
                   "pip install 'edgegw[pi]' in the gateway's venv" if missing else fix)


def _no_spi(subject: str, path: str) -> Finding:
    return Finding("spi_device", subject, "fault", f"SPI device {path} does not exist",
                   "enable SPI (sudo raspi-config nonint do_spi 0, or dtparam=spi=on in /boot/firmware/config.txt)"
                   " and reboot; spi_bus and spi_cs name /dev/spidevBUS.CS")


def _silent(subject: str, radio: Any, configured: int, error: str) -> Finding:
    import serial

    from edgegw.errors import ModuleError
    from edgegw.radio.serial_line import ModuleSilent

    others = [r for r in (*COMMON_RATES, *radio.baudrates) if r in radio.baudrates and r != configured]
    for rate in dict.fromkeys(others):
        try:
            radio.check(rate, SCAN_TIMEOUT)
        except ModuleSilent:
            continue
        except (ModuleError, serial.SerialException, OSError):
            pass  # it answered (with an error): this is its rate
        return Finding("radio_module", subject, "fault",
                       f"the module does not answer at {configured} baud (the config's) but does at {rate}",
                       f"set baudrate = {rate} in [[sources]] {radio.name} (or set the module itself to"
                       f" {configured})")
    tried = ", ".join(map(str, [configured, *dict.fromkeys(others)]))
    return Finding("radio_module", subject, "fault", f"the module does not answer: {error}; tried {tried} baud",
                   "check that the port is the radio module's (unplug it and see which port goes), that the"
                   " module has power, and that TX and RX are not swapped on a UART wiring")


def daemon_sources(config: Config) -> list[Finding]:
    """While a daemon runs (and holds the ports), what it last recorded of each source: a source
    ``down`` says why in the daemon's own words."""
    import sqlite3
    import time

    from edgegw.store.connection import db_path, open_reader

    path = db_path(config.data_dir)
    if not path.exists():
        return []  # not made yet: the daemon is starting
    names = {s.name for s in config.sources}
    # A source the daemon is (re)opening is "starting" for up to one answer's wait; what follows
    # says how it is: "receiving", or "down" with the reason.
    deadline = time.monotonic() + SETTLE
    try:
        conn = open_reader(path)
        try:
            while True:
                rows = [r for r in conn.execute("SELECT name, state, detail, changed_at FROM sources")
                        if r[0] in names]
                if time.monotonic() > deadline or all(r[1] != "starting" for r in rows):
                    break
                time.sleep(0.1)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return [Finding("radio_module", "sources", "skipped", f"cannot read the daemon's database {path}: {exc}")]
    findings = []
    for name, state, detail, changed_at in rows:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(changed_at or 0))
        if state == "down":
            findings.append(Finding("radio_module", f"source {name}", "fault",
                                    f"the running daemon cannot use the module since {since}: {detail}",
                                    "stop the daemon (systemctl stop edgegw) and run edgegw doctor again: it then"
                                    " talks to the module itself and says what to change"))
        elif state == "starting":
            findings.append(Finding("radio_module", f"source {name}", "warning",
                                    f"the running daemon has been opening the port since {since} ({detail})",
                                    "if this lasts, stop the daemon and run edgegw doctor again to talk to the module"))
        else:
            findings.append(Finding("radio_module", f"source {name}", "ok",
                                    f"the running daemon says {state} since {since}"))
    return findings
