"""Each network uplink's endpoint: a TCP connection within a short timeout, and where TLS is used, a
handshake checked against the configured CA, as the uplink itself makes it."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from edgegw.config import Config, HttpConnection, MqttConnection
from edgegw.doctor import Finding
from edgegw.doctor.access import READ, ServiceUser

CONNECT_TIMEOUT = 3.0  # s: a field LTE link answers a SYN well within this


def endpoints(config: Config) -> list[tuple[str, str, int, bool, Path | None, bool]]:
    """(uplink name, host, port, TLS, CA file, verify) of every network uplink."""
    out = []
    for u in config.uplinks:
        if isinstance(u, MqttConnection):
            out.append((u.name, u.host, u.port, u.tls, u.ca_file, True))
        elif isinstance(u, HttpConnection):
            parts = urlsplit(u.url)
            tls = parts.scheme == "https"
            out.append((u.name, parts.hostname or "", parts.port or (443 if tls else 80), tls, u.ca_file,
                        u.verify_tls))
    return out


def uplinks(config: Config, user: ServiceUser) -> list[Finding]:
    """Each network uplink reached, and its TLS checked, with its CA file readable by ``user``."""
    findings = []
    for name, host, port, tls, ca_file, verify in endpoints(config):
        subject = f"uplink {name} {host}:{port}"
        if ca_file is not None and (ca := ca_readable(subject, ca_file, user)) is not None:
            findings.append(ca)
        reached = reach(subject, host, port)
        findings.append(reached)
        if tls and reached.status == "ok":
            findings.append(handshake(subject, host, port, ca_file, verify))
    return findings


def daemon_uplinks(config: Config) -> list[Finding]:
    """While a daemon runs, what it last recorded of each uplink: a peer that accepts connections
    may still never acknowledge (a broker that sends no CONNACK or PUBACK, a platform answering 500)."""
    import sqlite3
    import time

    from edgegw.dbfile import explain
    from edgegw.store.connection import db_path, open_reader

    path = db_path(config.data_dir)
    if not path.exists():
        return []
    names = {u.name for u in config.effective_uplinks()}
    try:
        conn = open_reader(path)
        try:
            rows = conn.execute("SELECT name, state, detail, changed_at FROM uplinks").fetchall()
        finally:
            conn.close()
    except (sqlite3.DatabaseError, PermissionError) as exc:
        return [Finding("uplink_state", "uplinks", "skipped", explain(path, exc))]
    findings = []
    for name, state, detail, changed_at in rows:
        if name not in names:
            continue
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(changed_at or 0))
        if state == "stalled":
            findings.append(Finding("uplink_state", f"uplink {name}", "fault",
                                    f"the running daemon's uplink is stalled since {since}: {detail}",
                                    "edgegw status says what waits; check the platform's side (its logs, the"
                                    " credentials, a broker or agent that takes connections but does not answer)"))
        elif state == "down":
            findings.append(Finding("uplink_state", f"uplink {name}", "warning",
                                    f"the running daemon's uplink is down since {since}: {detail}",
                                    "the daemon tries again with a backoff; if this lasts, check the address, the"
                                    " network and the platform"))
        elif state is not None:
            findings.append(Finding("uplink_state", f"uplink {name}", "ok", f"the running daemon's uplink is {state}"))
    return findings


def ca_readable(subject: str, ca_file: Path, user: ServiceUser) -> Finding | None:
    """A fault if ``user`` may not read the CA file (this process may be root, who reads anything)."""
    try:
        st = ca_file.stat()
    except OSError:
        return None  # the handshake's finding says it is missing
    if user.may(st, READ):
        return None
    return Finding("uplink_tls", subject, "fault", f"{user.name} may not read ca_file {ca_file}:"
                   f" {user.why_not(st, READ)}", f"a CA certificate is public: sudo chmod 644 {ca_file}")


def reach(subject: str, host: str, port: int) -> Finding:
    """A TCP connection to ``host:port`` within CONNECT_TIMEOUT."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            pass
    except socket.gaierror as exc:
        return Finding("uplink_reach", subject, "fault", f"cannot resolve {host}: {exc.strerror}",
                       "check the host name in the config, and that the gateway has DNS (cat /etc/resolv.conf;"
                       " is the LTE link up?)")
    except TimeoutError:
        return Finding("uplink_reach", subject, "fault", f"no answer from {host}:{port} within {CONNECT_TIMEOUT:g} s",
                       "check the link (ping the host), the port number, and that a firewall lets the gateway out")
    except OSError as exc:
        return Finding("uplink_reach", subject, "fault", f"cannot connect to {host}:{port}: {exc.strerror}",
                       "nothing listens there: check the port number in the config and that the broker or server"
                       " runs (the platform team can tell)")
    return Finding("uplink_reach", subject, "ok", f"{host}:{port} accepts connections")


def handshake(subject: str, host: str, port: int, ca_file: Path | None, verify: bool) -> Finding:
    """A TLS handshake as the uplink makes it: the configured CA (or the system's), host name checked."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except FileNotFoundError:
            return Finding("uplink_tls", subject, "fault", f"ca_file {ca_file} does not exist",
                           "copy the platform's CA certificate (PEM) there, or correct ca_file")
        except PermissionError:
            return Finding("uplink_tls", subject, "fault", f"ca_file {ca_file} cannot be read",
                           f"a CA certificate is public: chmod 644 {ca_file}")
        except ssl.SSLError as exc:
            return Finding("uplink_tls", subject, "fault", f"ca_file {ca_file} is not a PEM certificate: {exc.reason}",
                           "ca_file must hold the CA certificate in PEM (-----BEGIN CERTIFICATE-----)")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT) as sock, \
                context.wrap_socket(sock, server_hostname=host) as tls:
            version = tls.version()
    except ssl.SSLCertVerificationError as exc:
        trusted = f"the CA in {ca_file}" if ca_file else "the system's CAs (no ca_file set)"
        return Finding("uplink_tls", subject, "fault",
                       f"the server's certificate is not trusted by {trusted}: {exc.verify_message}",
                       "set ca_file to the CA certificate that signed the server's (ask the platform team);"
                       " if the message names the host, the certificate is for another name: use the host"
                       " name it was issued for")
    except (ssl.SSLError, OSError) as exc:
        return Finding("uplink_tls", subject, "fault", f"TLS handshake failed: {exc}",
                       "check that this port speaks TLS (MQTT over TLS is usually 8883, HTTPS 443)")
    if not verify:
        return Finding("uplink_tls", subject, "warning", f"{version}, but the certificate is not checked"
                       " (verify_tls = false): anyone on the path can pose as the server",
                       "set verify_tls = true and ca_file to the server's CA")
    return Finding("uplink_tls", subject, "ok", f"{version} handshake, certificate trusted")
