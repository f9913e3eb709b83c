"""``edgegw doctor`` and ``edgegw config check --machine``: each field fault made real on this
machine (a pty that does not answer, an emulated module at another baud rate or refusing a setting,
a broker that stopped, a data directory and secrets with the wrong modes, a self-signed TLS server,
a daemon's lock, a Pi's firmware tools faked at the lowest level: on PATH), then found with its fix.

The commands run as child processes, as an installer runs them: their exit status and stdout are
the real ones, and their logging set-up stays out of this process.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgegw.config import load_config
from edgegw.doctor import host, security
from edgegw.doctor.access import ServiceUser
from edgegw.radio.emulator import RylrEmulator
from edgegw.running import DataDirLock
from edgegw.uplink.sigfox.emulator import SigfoxEmulator
from tests.broker import free_port

ROOT = Path(__file__).parent.parent
AS_ROOT = os.geteuid() == 0


def gateway(tmp: Path, port: str | Path, source: str = "", uplinks: str = "", top: str = "") -> Path:
    """A config with one RYLR module on ``port``, two devices, and data in tmp/data."""
    path = tmp / "gateway.toml"
    path.write_text(
        f'gateway_id = "gw-doctor"\ndata_dir = "data"\n{top}\n'
        f'[[sources]]\ntype = "rylr"\nname = "lora0"\nport = "{port}"\n{source}\n'
        '[[devices]]\nid = "trap-01"\naddress = 17\ndriver = "trap"\n'
        '[[devices]]\nid = "river-01"\naddress = 21\ndriver = "water_level"\n'
        f"{uplinks}"
    )
    (tmp / "data").mkdir(exist_ok=True)
    return path


def edgegw(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgegw", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def doctor(config: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    done = edgegw("doctor", "-c", str(config), "--json", *args, env=env)
    report = json.loads(done.stdout)
    assert set(report) == {"config", "user", "ok", "faults", "warnings", "findings"}
    assert report["ok"] == (report["faults"] == 0) == (done.returncode == 0)
    for f in report["findings"]:
        assert set(f) == {"check", "subject", "status", "message", "fix"}
        assert f["status"] in ("ok", "warning", "fault", "skipped")
        assert f["status"] in ("ok", "skipped") or f["fix"], f  # every fault and warning says what to do
    return done.returncode, report


def found(report: dict, check: str) -> list[dict]:
    return [f for f in report["findings"] if f["check"] == check]


def one(report: dict, check: str) -> dict:
    (finding,) = found(report, check)
    return finding


@pytest.fixture
def someone() -> tuple[str, int]:
    """The user whose permissions are judged: you, or when the tests run as root (who may open
    anything) the unprivileged ``nobody``, as the service runs unprivileged."""
    if AS_ROOT:
        pw = pwd.getpwnam("nobody")
        return pw.pw_name, pw.pw_uid
    return pwd.getpwuid(os.geteuid()).pw_name, os.geteuid()


def user_args(name: str) -> list[str]:
    return ["--user", name] if AS_ROOT else []


# -- the radio ----------------------------------------------------------------------------------------

def test_a_healthy_gateway_exits_0_and_says_what_it_checked(tmp_path, emulator):
    code, report = doctor(gateway(tmp_path, emulator.link))
    assert code == 0, report
    module = one(report, "radio_module")
    assert module["status"] == "ok" and "answered at 115200 baud and took every setting" in module["message"]
    assert "AT+PARAMETER=" in module["message"] and "AT+PARAMETER=9,7,1,12" in emulator.commands
    assert one(report, "serial_port")["status"] == "ok"
    assert one(report, "data_dir")["status"] == "ok" and one(report, "daemon")["status"] == "ok"


def test_a_missing_serial_port_is_a_fault_naming_the_ports_there(tmp_path):
    code, report = doctor(gateway(tmp_path, tmp_path / "ttyUSB7"))
    assert code == 1 and report["ok"] is False
    port = one(report, "serial_port")
    assert port["status"] == "fault" and port["message"] == f"serial port {tmp_path / 'ttyUSB7'} does not exist"
    assert "plug the module in" in port["fix"] and "/dev/serial/by-id/" in port["fix"]
    assert not found(report, "radio_module")  # nothing to talk to


@pytest.mark.skipif(not AS_ROOT, reason="making a port root:dialout needs root")
def test_a_port_the_service_user_may_not_open_says_why_and_which_group(tmp_path, emulator):
    dialout = grp.getgrnam("dialout").gr_gid
    slave = os.path.realpath(emulator.link)
    os.chown(slave, 0, dialout)  # as udev leaves a USB serial adapter
    os.chmod(slave, 0o660)
    code, report = doctor(gateway(tmp_path, emulator.link), "--user", "nobody")
    assert code == 1
    port = one(report, "serial_port")
    assert port["status"] == "fault"
    assert port["message"] == (f"nobody may not open {emulator.link}: owned by root:dialout, mode crw-rw----; nobody"
                               " is neither its owner nor in group dialout, and others may not read/write")
    assert port["fix"].startswith("add nobody to group dialout: sudo usermod -aG dialout nobody")


def test_a_port_where_nothing_answers_is_a_fault_after_every_baud_rate(tmp_path):
    master, slave = os.openpty()  # a port with no module behind it
    try:
        code, report = doctor(gateway(tmp_path, os.ttyname(slave)))
    finally:
        os.close(master)
        os.close(slave)
    assert code == 1
    module = one(report, "radio_module")
    assert module["status"] == "fault"
    assert module["message"].startswith("the module does not answer: AT: no answer within 2 s")
    assert module["message"].endswith("tried 115200, 9600, 19200, 57600, 38400, 300, 1200, 4800, 28800 baud")
    assert "TX and RX are not swapped" in module["fix"]


def test_the_sigfox_module_is_asked_who_it_is_and_nothing_is_sent(tmp_path, emulator):
    sigfox = SigfoxEmulator(tmp_path / "ttySIGFOX")
    sigfox.plug()
    master, slave = os.openpty()  # a second Sigfox port with no module behind it
    uplinks = (f'[[uplinks]]\ntype = "sigfox"\nport = "{sigfox.link}"\n'
               f'[[uplinks]]\ntype = "sigfox"\nname = "spare"\nport = "{os.ttyname(slave)}"\n')
    try:
        code, report = doctor(gateway(tmp_path, emulator.link, uplinks=uplinks))
    finally:
        sigfox.unplug()
        os.close(master)
        os.close(slave)
    assert code == 1
    good, silent = found(report, "sigfox_module")
    assert good["status"] == "ok" and good["subject"] == "uplinks sigfox (sigfox)"
    assert "device id 0042ABCD" in good["message"] and "nothing was sent" in good["message"]
    assert sigfox.commands == ["AT", "AT$I=10", "AT$I=11"] and sigfox.sent == []  # no message of the budget spent
    assert silent["status"] == "fault" and silent["message"].startswith("the module does not answer as a WSSFM10R3")
    assert "9600" in silent["fix"]


def test_a_module_at_another_baud_rate_is_found_at_its_rate(tmp_path):
    module_at_9600 = RylrEmulator(tmp_path / "ttyLORA0", baudrate=9600)
    module_at_9600.plug()
    try:
        code, report = doctor(gateway(tmp_path, module_at_9600.link))
    finally:
        module_at_9600.unplug()
    assert code == 1
    module = one(report, "radio_module")
    assert module["status"] == "fault"
    assert module["message"] == "the module does not answer at 115200 baud (the config's) but does at 9600"
    assert module["fix"] == "set baudrate = 9600 in [[sources]] lora0 (or set the module itself to 115200)"


def test_a_setting_the_module_refuses_is_named_with_its_error_meaning(tmp_path, emulator):
    # The config takes network ids 0-18 (RYLR896); an RYLR998 refuses 1 (it takes 3-15 or 18).
    code, report = doctor(gateway(tmp_path, emulator.link, source="network_id = 1"))
    assert code == 1
    module = one(report, "radio_module")
    assert module["status"] == "fault"
    assert module["message"] == ("the module refused a setting: AT+NETWORKID=1: module answered +ERR=4"
                                 " (unknown command)")
    assert module["fix"].startswith("change that setting in [[sources]] lora0 to one the module takes")


def test_a_running_daemon_is_reported_and_its_port_left_alone(tmp_path, emulator):
    config = gateway(tmp_path, emulator.link)
    lock = DataDirLock(tmp_path / "data", "test")  # the lock `edgegw run` holds while it runs
    try:
        code, report = doctor(config)
    finally:
        lock.release()
    daemon = one(report, "daemon")
    assert daemon["status"] == "warning" and f"edgegw (pid {os.getpid()}) runs on this data directory" in \
        daemon["message"]
    assert "systemctl stop edgegw" in daemon["fix"]
    assert not found(report, "radio_module") and emulator.commands == []  # the daemon's port: untouched
    assert code == 0  # a warning, not a fault


# -- storage --------------------------------------------------------------------------------------------

def test_a_data_directory_the_service_user_may_not_write_is_a_fault(tmp_path, emulator, someone):
    name, uid = someone
    config = gateway(tmp_path, emulator.link)
    data = tmp_path / "data"
    os.chown(data, uid, -1)
    data.chmod(0o500)
    try:
        code, report = doctor(config, "--no-radio", *user_args(name))
    finally:
        data.chmod(0o700)
    assert code == 1
    finding = one(report, "data_dir")
    assert finding["status"] == "fault"
    assert finding["message"] == (f"{name} may not write {data}: owned by {name}:{grp.getgrgid(data.stat().st_gid).gr_name},"
                                  f" mode dr-x------; {name} owns it, but the owner bits do not allow write/enter")
    assert finding["fix"] == f"sudo chown -R {name} {data} && sudo chmod u+rwx {data}"


def test_a_data_directory_on_a_read_only_filesystem_is_a_fault(tmp_path, emulator):
    config = gateway(tmp_path, emulator.link)
    data = tmp_path / "data"
    # As an SD card the kernel remounted read-only after I/O errors: a read-only mount on data_dir.
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(data)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount here: {mounted.stderr.decode().strip()}")
    try:
        code, report = doctor(config, "--no-radio")
    finally:
        subprocess.run(["umount", str(data)], check=True)
    assert code == 1
    finding = one(report, "data_dir")
    assert finding["status"] == "fault" and finding["message"] == f"the filesystem holding {data} is mounted read-only"
    assert finding["fix"].startswith("an SD card remounted read-only after errors is failing: check dmesg")


def test_a_disk_below_min_free_is_a_fault(tmp_path, emulator):
    code, report = doctor(gateway(tmp_path, emulator.link, top='[store]\nmin_free = "1000000GB"'), "--no-radio")
    assert code == 1
    disk = one(report, "disk")
    assert disk["status"] == "fault" and "below [store] min_free (1,000,000,000 MB)" in disk["message"]
    assert "move data_dir to a bigger disk" in disk["fix"]


# -- secrets and devices ---------------------------------------------------------------------------------

def test_a_keys_file_others_may_read_is_a_fault(tmp_path, emulator, someone):
    name, uid = someone
    keys = tmp_path / "keys.toml"
    keys.write_text('[keys]\n"trap-01" = "2b7e151628aed2a6abf7158809cf4f3c"\n')
    os.chown(keys, uid, -1)
    keys.chmod(0o644)
    code, report = doctor(gateway(tmp_path, emulator.link, top='keys_file = "keys.toml"'), "--no-radio",
                          *user_args(name))
    assert code == 1
    secret = one(report, "secret_file")
    assert secret["status"] == "fault"
    assert secret["message"].startswith(f"{keys} may be read by group or others (mode -rw-r--r--)")
    assert secret["fix"] == f"sudo chown {name} {keys} && sudo chmod 600 {keys}"
    # ...and with the fix applied, the keys file is fine, and the device without a key is named.
    keys.chmod(0o600)
    code, report = doctor(gateway(tmp_path, emulator.link, top='keys_file = "keys.toml"'), "--no-radio",
                          *user_args(name))
    assert one(report, "secret_file")["status"] == "ok"
    devices = one(report, "device_keys")
    assert devices["status"] == "warning"
    assert devices["message"].startswith("1 device(s) without a frame key, while 1 has one: anyone in radio range"
                                         " can send as river-01")
    assert devices["fix"].startswith("give each a key: edgegw keys new DEVICE -c CONFIG")


def test_inline_secrets_and_secrets_sent_without_tls_are_named(tmp_path):
    password = tmp_path / "broker.password"
    password.write_text("s3cret\n")
    password.chmod(0o600)
    config_path = gateway(tmp_path, "/dev/ttyUSB0", uplinks=(
        '[[uplinks]]\ntype = "mqtt"\nname = "town"\nhost = "broker.town.example"\nusername = "gw"\n'
        f'password_file = "{password}"\n'
        '[[uplinks]]\ntype = "ngsi-v2"\nname = "orion"\nurl = "http://orion.town.example:1026"\n'
        'token = "abc123"\n'))
    config_path.chmod(0o644)
    config, _ = load_config(config_path, keys=False)
    findings = security.secrets(config, config_path, ServiceUser.current())
    by_check = {(f.check, f.subject): f for f in findings}
    inline = by_check["inline_secret", "uplinks orion token"]
    assert inline.status == "fault" and "every user of this machine can read it" in inline.message
    assert 'token_file = "/etc/edgegw/orion.token"' in inline.fix
    mqtt = by_check["plain_secret", "uplinks town broker.town.example:1883"]
    assert mqtt.status == "fault" and "sent without TLS" in mqtt.message and "tls = true" in mqtt.fix
    http = by_check["plain_secret", "uplinks orion http://orion.town.example:1026"]
    assert http.status == "fault" and "https://" in http.fix
    assert by_check["secret_file", "uplinks town password_file"].status == "ok"
    # A tired installer's `touch`: the broker would refuse an empty password, with no word of why.
    password.write_text("\n")
    empty = {(f.check, f.subject): f for f in security.secrets(config, config_path, ServiceUser.current())}[
        "secret_file", "uplinks town password_file"]
    assert empty.status == "fault" and empty.message == f"{password} is empty: it should hold the password uplink town sends"
    assert empty.fix == "write the password there (one line), as the service user"


# -- uplinks ---------------------------------------------------------------------------------------------

def mqtt_uplink(port: int, extra: str = "") -> str:
    return f'[[uplinks]]\ntype = "mqtt"\nname = "town"\nhost = "127.0.0.1"\nport = {port}\n{extra}\n'


def test_a_broker_that_stopped_is_unreachable(tmp_path, emulator, mosquitto):
    config = gateway(tmp_path, emulator.link, uplinks=mqtt_uplink(mosquitto.port))
    code, report = doctor(config, "--no-radio")
    assert one(report, "uplink_reach")["status"] == "ok"
    mosquitto.stop()
    code, report = doctor(config, "--no-radio")
    assert code == 1
    reach = one(report, "uplink_reach")
    assert reach["status"] == "fault" and reach["subject"] == f"uplink town 127.0.0.1:{mosquitto.port}"
    assert reach["message"] == f"cannot connect to 127.0.0.1:{mosquitto.port}: Connection refused"
    assert "check the port number" in reach["fix"]


class TlsServer:
    """A TLS server on loopback with an openssl-made self-signed certificate: it only shakes hands."""

    def __init__(self, tmp: Path):
        self.cert, key = tmp / "server.pem", tmp / "server.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                        "-out", str(self.cert)], check=True, capture_output=True)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(self.cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(2)
            try:
                with self.context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()  # a client that refused our certificate, or only knocked

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def tls_server(tmp_path):
    if subprocess.run(["which", "openssl"], capture_output=True).returncode:
        pytest.skip("needs openssl (apt-get install openssl)")
    server = TlsServer(tmp_path)
    yield server
    server.stop()


def test_a_self_signed_broker_certificate_is_a_tls_fault_until_its_ca_is_configured(tmp_path, emulator, tls_server):
    config = gateway(tmp_path, emulator.link, uplinks=mqtt_uplink(tls_server.port, "tls = true"))
    code, report = doctor(config, "--no-radio")
    assert code == 1
    tls = one(report, "uplink_tls")
    assert tls["status"] == "fault"
    assert tls["message"] == ("the server's certificate is not trusted by the system's CAs (no ca_file set):"
                              " self-signed certificate")
    assert tls["fix"].startswith("set ca_file to the CA certificate that signed the server's")

    missing = tmp_path / "nope.pem"
    config = gateway(tmp_path, emulator.link, uplinks=mqtt_uplink(tls_server.port, f'tls = true\nca_file = "{missing}"'))
    tls = one(doctor(config, "--no-radio")[1], "uplink_tls")
    assert tls["status"] == "fault" and tls["message"] == f"ca_file {tmp_path / 'nope.pem'} does not exist"
    assert tls["fix"] == "copy the platform's CA certificate (PEM) there, or correct ca_file"

    trusted = f'tls = true\nca_file = "{tls_server.cert}"'
    config = gateway(tmp_path, emulator.link, uplinks=mqtt_uplink(tls_server.port, trusted))
    tls = one(doctor(config, "--no-radio")[1], "uplink_tls")
    assert tls["status"] == "ok" and tls["message"].endswith("handshake, certificate trusted")


# -- the machine: a Pi's firmware and the clock, faked at their tools ---------------------------------------

def fake_tool(bin_dir: Path, name: str, output: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text(f"#!/bin/sh\necho '{output}'\n")
    tool.chmod(0o755)


def test_under_voltage_now_is_a_fault_and_earlier_a_warning(tmp_path, emulator):
    config = gateway(tmp_path, emulator.link)
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "vcgencmd", "throttled=0x50005")  # under-voltage and throttled now, and since boot
    code, report = doctor(config, "--no-radio", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert code == 1
    power = one(report, "power")
    assert power["status"] == "fault" and power["message"] == "now: under-voltage, throttled (get_throttled 0x50005)"
    assert power["fix"].startswith("use the official 5.1 V supply")
    fake_tool(bin_dir, "vcgencmd", "throttled=0x50000")
    power = one(doctor(config, "--no-radio", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})[1], "power")
    assert power["status"] == "warning" and power["message"].startswith("since boot: under-voltage, throttling")


def test_no_vcgencmd_means_no_power_finding(tmp_path, emulator):
    if subprocess.run(["which", "vcgencmd"], capture_output=True).returncode == 0:
        pytest.skip("this machine has a vcgencmd")
    assert not found(doctor(gateway(tmp_path, emulator.link), "--no-radio")[1], "power")


def test_a_clock_not_synchronised_is_a_warning_with_the_fix(tmp_path, emulator):
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "timedatectl", "no")
    code, report = doctor(gateway(tmp_path, emulator.link), "--no-radio",
                          env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert code == 0  # a warning alone
    clock = one(report, "clock")
    assert clock["status"] == "warning"
    assert clock["message"].startswith("the clock is not synchronised (timedatectl NTPSynchronized=no)")
    assert clock["message"].endswith("set [clock] await_sync to hold them until then")
    assert clock["fix"].startswith("timedatectl set-ntp true")
    fake_tool(bin_dir, "timedatectl", "yes")
    clock = one(doctor(gateway(tmp_path, emulator.link), "--no-radio",
                       env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})[1], "clock")
    assert clock == {"check": "clock", "subject": "system clock", "status": "ok",
                     "message": "synchronised (timedatectl NTPSynchronized=yes)", "fix": ""}


# -- the text form ---------------------------------------------------------------------------------------

def test_the_text_form_prints_each_fault_with_its_fix_and_exits_1(tmp_path):
    done = edgegw("doctor", "-c", str(gateway(tmp_path, tmp_path / "ttyUSB7")))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    at = lines.index(f"FAULT serial port: sources[0] lora0: serial port {tmp_path / 'ttyUSB7'} does not exist")
    assert lines[at + 1].startswith("      fix: plug the module in")
    assert lines[-1].startswith("1 fault(s)")


def test_help_says_what_the_exit_status_means():
    done = edgegw("doctor", "--help")
    assert "0 when there is no fault (warnings alone exit 0), 1 when there is at least one fault" in \
        " ".join(done.stdout.split())


# -- config check --machine, and the unit that runs it before each start ------------------------------------

def test_machine_check_passes_on_a_machine_that_can_run_the_config(tmp_path, emulator):
    config = gateway(tmp_path, emulator.link)
    done = edgegw("config", "check", "--machine", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(f"{config}: OK: gateway gw-doctor, 1 source(s), 2 device(s)")
    assert f"{config}: machine OK for " in done.stdout
    assert emulator.commands == []  # fast: the module is not talked to


def test_machine_check_fails_on_a_secret_others_may_read(tmp_path, emulator, someone):
    name, uid = someone
    password = tmp_path / "broker.password"
    password.write_text("s3cret\n")
    os.chown(password, uid, -1)
    password.chmod(0o644)
    config = gateway(tmp_path, emulator.link, uplinks=mqtt_uplink(free_port(), f'password_file = "{password}"'))
    done = edgegw("config", "check", "--machine", str(config), *user_args(name))
    assert done.returncode == 1
    assert f"FAULT secret file: uplinks town password_file: {password} may be read by group or others" in done.stdout
    assert f"fix: sudo chown {name} {password} && sudo chmod 600 {password}" in done.stdout
    assert "this machine cannot run it" in done.stderr


def test_the_units_exec_start_pre_fails_the_start_on_a_missing_port_with_the_fix(tmp_path):
    unit = (ROOT / "systemd" / "edgegw.service").read_text().splitlines()
    (pre,) = [line.partition("=")[2] for line in unit if line.startswith("ExecStartPre=")]
    program, *args = pre.split()
    assert program == "/opt/edgegw/.venv/bin/edgegw" and args[:3] == ["config", "check", "--machine"]
    config = gateway(tmp_path, tmp_path / "ttyUSB0")
    args = [str(config) if a == "/etc/edgegw/gateway.toml" else a for a in args]
    done = edgegw(*args)
    assert done.returncode == 1  # the start fails here, not in a daemon retrying the port forever
    assert f"FAULT serial port: sources[0] lora0: serial port {tmp_path / 'ttyUSB0'} does not exist" in done.stdout
    assert "fix: plug the module in" in done.stdout


def test_with_the_daemon_running_its_source_down_is_the_fault_in_its_own_words(tmp_path):
    from tests.gateway import Daemon, wait_until

    master, slave = os.openpty()  # the daemon's port, with no module behind it
    daemon = Daemon(gateway(tmp_path, os.ttyname(slave))).start()
    try:
        wait_until(lambda: any(s["state"] == "down" for s in daemon.status().get("sources", [])), 30,
                   f"the source down (log: {daemon.log_tail()})")
        code, report = doctor(daemon.config)
    finally:
        daemon.stop()
        os.close(master)
        os.close(slave)
    assert code == 1, json.dumps(report, indent=1)
    assert one(report, "daemon")["status"] == "warning"
    (module,) = [f for f in found(report, "radio_module") if f["subject"] == "source lora0"]
    assert module["status"] == "fault"
    assert "the running daemon cannot use the module since" in module["message"]
    assert module["message"].endswith("AT: no answer within 2 s (wrong port or baud rate?)")
    assert module["fix"].startswith("stop the daemon (systemctl stop edgegw) and run edgegw doctor again")


def test_uplinks_the_running_daemon_records_stalled_or_down_are_named_in_its_words(tmp_path):
    # A broker that takes connections but never answers CONNECT, a context broker answering 500:
    # "accepts connections" was all doctor said, and "0 fault(s)".
    from edgegw.doctor.network import daemon_uplinks
    from edgegw.store import Store
    from edgegw.store.connection import db_path

    config, _ = load_config(gateway(tmp_path, "/dev/null", uplinks=mqtt_uplink(1883)
                                 + '[[uplinks]]\ntype = "file"\nname = "stick"\n'), keys=False)
    store = Store(db_path(config.data_dir))
    store.register_uplinks(["town", "stick", "gone"])
    with store.transaction():
        store.uplink_state("town", "stalled", "items waiting and nothing acknowledged for over 600 s;"
                           " uplink down: no CONNACK within the 10 s deadline", 1.8e9)
        store.uplink_state("stick", "up", "out", 1.8e9)
        store.uplink_state("gone", "down", "no longer configured", 1.8e9)
    store.close()
    findings = {f.subject: f for f in daemon_uplinks(config)}
    assert set(findings) == {"uplink town", "uplink stick"}
    assert findings["uplink town"].status == "fault"
    assert findings["uplink town"].message.endswith("uplink down: no CONNACK within the 10 s deadline")
    assert findings["uplink town"].fix.startswith("edgegw status says what waits")
    assert findings["uplink stick"].status == "ok"


def test_a_damaged_database_is_a_fault_and_every_command_reading_it_says_so_in_one_line(tmp_path):
    config = gateway(tmp_path, "/dev/null")
    (tmp_path / "data" / "edgegw.db").write_bytes(b"NOT SQLITE AT ALL" + bytes(4096))
    code, report = doctor(config, "--no-radio")
    assert code == 1
    database = one(report, "database")
    assert database["status"] == "fault" and database["message"] == "damaged: file is not a database"
    assert database["fix"].startswith("sudo systemctl restart edgegw: the daemon sets it aside")
    for command in (["status"], ["alarms"], ["monitor", "--once"], ["outbox", "stats"]):
        done = edgegw(*command, "-c", str(config))
        assert done.returncode == 1 and "Traceback" not in done.stderr, (command, done.stderr)
        assert done.stderr.startswith(f"Error: the gateway database {tmp_path / 'data' / 'edgegw.db'} is damaged"
                                      " (file is not a database)"), (command, done.stderr)


def test_a_ca_file_the_service_user_may_not_read_is_a_tls_fault(tmp_path, emulator, tls_server, someone):
    name, _ = someone
    tls_server.cert.chmod(0o000)
    config = gateway(tmp_path, emulator.link, uplinks=mqtt_uplink(tls_server.port, f'tls = true\nca_file = "{tls_server.cert}"'))
    code, report = doctor(config, "--no-radio", *user_args(name))
    assert code == 1
    ca = found(report, "uplink_tls")[0]
    assert ca["status"] == "fault" and ca["message"].startswith(f"{name} may not read ca_file {tls_server.cert}: owned by")
    assert ca["message"].endswith("mode ----------; " + (f"{name} is neither its owner nor in group root, and others may not read"
                                                         if AS_ROOT else f"{name} owns it, but the owner bits do not allow read"))
    assert ca["fix"] == f"a CA certificate is public: sudo chmod 644 {tls_server.cert}"


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_any_get_throttled_value_is_a_fault_now_a_warning_since_boot_or_ok(bits):
    finding = host.power(bits)
    expected = "fault" if bits & 0xF else "warning" if bits & 0xF0000 else "ok"
    assert finding.status == expected and f"get_throttled {bits:#x}" in finding.message
    if bits & 0b1:
        assert finding.message.startswith("now: under-voltage")
    assert bool(finding.fix) == (expected != "ok")


@pytest.mark.skipif(not AS_ROOT, reason="giving a file to another user needs root")
def test_a_secret_owned_by_another_user_is_a_warning(tmp_path, emulator):
    token = tmp_path / "orion.token"
    token.write_text("abc123\n")
    token.chmod(0o600)
    os.chown(token, pwd.getpwnam("nobody").pw_uid, -1)  # private, but to the wrong user
    config = gateway(tmp_path, emulator.link, uplinks=(
        f'[[uplinks]]\ntype = "ngsi-v2"\nname = "orion"\nurl = "http://127.0.0.1:{free_port()}"\n'
        f'token_file = "{token}"\n'))
    _, report = doctor(config, "--no-radio", "--user", "root")
    secret = one(report, "secret_file")
    assert secret["status"] == "warning" and secret["message"] == f"{token} is owned by nobody, who may read and change it"
    assert secret["fix"] == f"sudo chown root {token} && sudo chmod 600 {token}"
