"""A throw-away RabbitMQ cluster (Debian's rabbitmq-server 3.10 with its MQTT plugin) on 127.0.0.1.

* :class:`RabbitCluster` - N nodes on one machine, each with its own node name, ports, database
  (``RABBITMQ_MNESIA_BASE``), config file and log under a work dir, and one epmd of our own on a port
  we choose (``ERL_EPMD_PORT``), so neither the system's epmd nor a rabbitmq-server service started by
  the package is touched or used. Nodes form the cluster at first boot (classic-config peer discovery).
  :meth:`RabbitCluster.kill` ends one node with SIGKILL, :meth:`RabbitCluster.start_node` brings it
  back with its database, and it rejoins.

The platform's MQTT subscriptions are persistent sessions (``clean_session=False``) at QoS 1, which
RabbitMQ 3.10 keeps in a queue per subscriber; ``mqtt.durable_queue_type = quorum`` makes that queue
a quorum queue, replicated on every node (Raft), so it survives the death of any one node.

Only 127.0.0.1 is used. Every process is started here and ended by its PID only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from tests.broker import HOST, _accepts_connections, free_port

SBIN = Path("/usr/lib/rabbitmq/bin")  # the scripts themselves: /usr/sbin's wrapper would su to the service user
START_TIMEOUT = 120.0  # three Erlang nodes booting at once on a loaded 2-core machine
STUCK_AFTER = 40.0  # s a node's MQTT port may refuse sessions before it is restarted (see wait_node)


def available() -> bool:
    """True when rabbitmq-server and epmd are installed (``apt-get install rabbitmq-server``)."""
    return (SBIN / "rabbitmq-server").exists() and shutil.which("epmd") is not None


def _mqtt_session(port: int) -> bool:
    """True when the broker on ``port`` accepts an MQTT CONNECT (CONNACK without error)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgegw-ready-{port}")
    answer: list[bool] = []
    client.on_connect = lambda c, u, f, rc, p: answer.append(not rc.is_failure)
    try:
        client.connect(HOST, port, keepalive=10)
        deadline = time.monotonic() + 10
        while not answer and time.monotonic() < deadline and client.loop(0.2) == mqtt.MQTT_ERR_SUCCESS:
            pass
        client.disconnect()
    except OSError:
        return False
    return answer == [True]


class RabbitCluster:
    """A RabbitMQ cluster of ``size`` nodes with the MQTT plugin, all on 127.0.0.1."""

    def __init__(self, workdir: Path, size: int = 3):
        self.workdir = Path(workdir)
        self.size = size
        self.token = f"{os.getpid()}x{free_port()}"  # node names unique on this machine
        self.names = [f"edgegw{n}-{self.token}@localhost" for n in range(size)]
        self.mqtt_ports = [free_port() for _ in range(size)]
        self.amqp_ports = [free_port() for _ in range(size)]
        self.dist_ports = [free_port() for _ in range(size)]
        self.epmd_port = free_port()
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self.epmd: subprocess.Popen[bytes] | None = None

    @property
    def brokers(self) -> list[str]:
        """The MQTT addresses of the nodes, as an uplink's ``brokers`` lists them."""
        return [f"{HOST}:{p}" for p in self.mqtt_ports]

    def pid(self, n: int) -> int | None:
        proc = self.procs[n]
        return proc.pid if proc is not None and proc.poll() is None else None

    def _env(self, n: int) -> dict[str, str]:
        node = self.workdir / f"node{n}"
        return dict(
            os.environ,
            HOME=str(self.workdir),  # the Erlang cookie lives here, shared by the nodes and rabbitmqctl
            ERL_EPMD_PORT=str(self.epmd_port), ERL_EPMD_ADDRESS=HOST,
            RABBITMQ_NODENAME=self.names[n], RABBITMQ_NODE_IP_ADDRESS=HOST,
            RABBITMQ_NODE_PORT=str(self.amqp_ports[n]), RABBITMQ_DIST_PORT=str(self.dist_ports[n]),
            RABBITMQ_MNESIA_BASE=str(node / "mnesia"), RABBITMQ_LOG_BASE=str(node / "log"),
            RABBITMQ_CONFIG_FILE=str(node / "rabbitmq.conf"), RABBITMQ_CONF_ENV_FILE=str(self.workdir / "env.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(node / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.workdir / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(node / "pid"),
            # The script then execs the VM in its own process instead of running it as a child behind
            # signal traps: the PID we hold is the node's, so SIGKILL kills the node, not a shell.
            RUNNING_UNDER_SYSTEMD="true",
            # Erlang distribution on loopback only; the node's own epmd is ours.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )

    def _config(self, n: int) -> str:
        peers = "".join(f"cluster_formation.classic_config.nodes.{i + 1} = {name}\n"
                        for i, name in enumerate(self.names))
        return (f"listeners.tcp.1 = {HOST}:{self.amqp_ports[n]}\n"
                f"mqtt.listeners.tcp.1 = {HOST}:{self.mqtt_ports[n]}\n"
                "mqtt.allow_anonymous = true\n"
                "mqtt.durable_queue_type = quorum\n"
                "loopback_users = none\n"
                "cluster_formation.peer_discovery_backend = classic_config\n" + peers +
                "cluster_formation.randomized_startup_delay_range.min = 0\n"
                "cluster_formation.randomized_startup_delay_range.max = 1\n"
                "log.file.level = warning\n")

    def start(self) -> RabbitCluster:
        """Start epmd and every node; return once each node's MQTT listener takes connections and the
        cluster has all its members (a quorum queue is placed on the nodes in the cluster when declared)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        cookie = self.workdir / ".erlang.cookie"
        cookie.write_text(self.token.replace("x", "q") + "cookie")
        cookie.chmod(0o400)
        (self.workdir / "env.conf").write_text("")
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        with open(self.workdir / "epmd.log", "ab") as out:
            self.epmd = subprocess.Popen(["epmd", "-port", str(self.epmd_port), "-address", HOST],
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not _accepts_connections(self.epmd_port):
            if time.monotonic() > deadline or self.epmd.poll() is not None:
                self.stop()
                raise RuntimeError(f"epmd did not start on port {self.epmd_port}")
            time.sleep(0.05)
        for n in range(self.size):
            node = self.workdir / f"node{n}"
            node.mkdir(exist_ok=True)
            (node / "rabbitmq.conf").write_text(self._config(n))
            (node / "advanced.config").write_text("[].\n")
            self.start_node(n, wait=False)
        try:
            for n in range(self.size):
                self.wait_node(n)
            self.wait_clustered()
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, n: int, wait: bool = True) -> None:
        """Start node ``n`` (again, after :meth:`kill`): it keeps its database and rejoins the cluster."""
        with open(self.workdir / f"node{n}.out", "ab") as out:
            self.procs[n] = subprocess.Popen([str(SBIN / "rabbitmq-server")], env=self._env(n), cwd=self.workdir,
                                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        if wait:
            self.wait_node(n)

    def wait_node(self, n: int, timeout: float = START_TIMEOUT) -> None:
        """Until node ``n`` accepts an MQTT session: its port opens before the cluster-wide client-id
        registry answers on it, and until then it refuses CONNECT ("Server unavailable") after 5 s.

        Nodes booting at once sometimes leave one outside the registry's Raft cluster for good (its
        join refused: ``cluster_change_not_permitted``; "client ID registration timed out" on every
        CONNECT, 1 start in 6 here). Restarting that node, with its database, lets it join: after
        :data:`STUCK_AFTER` of refusals it is restarted, up to twice."""
        deadline = time.monotonic() + timeout
        refusing_since: float | None = None
        restarts = 0
        while not (listening := _accepts_connections(self.mqtt_ports[n])) or not _mqtt_session(self.mqtt_ports[n]):
            proc = self.procs[n]
            if proc is None or proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ node {self.names[n]} did not open MQTT port {self.mqtt_ports[n]}:\n"
                                   + self.log_tail(n))
            if listening and refusing_since is None:
                refusing_since = time.monotonic()
            if refusing_since is not None and time.monotonic() - refusing_since > STUCK_AFTER and restarts < 2:
                restarts, refusing_since = restarts + 1, None
                self.stop_node(n)
                self.start_node(n, wait=False)
                deadline = max(deadline, time.monotonic() + timeout / 2)
            time.sleep(0.2)

    def stop_node(self, n: int) -> None:
        """Stop node ``n`` by its PID (SIGTERM, then SIGKILL after 30 s)."""
        proc = self.procs[n]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def ctl(self, *args: str, node: int = 0, timeout: float = 60) -> str:
        """rabbitmqctl against one node (its output; RuntimeError when it fails)."""
        done = subprocess.run([str(SBIN / "rabbitmqctl"), "-n", self.names[node], *args], env=self._env(node),
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def wait_clustered(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                running = self.ctl("eval", "length(rabbit_nodes:all_running()).").strip()
                if running == str(self.size):
                    return
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not gather its {self.size} nodes:\n" + self.log_tail(0))
            time.sleep(1)

    def queues(self) -> list[list[str]]:
        """Every queue as [name, type, durable, messages]."""
        out = self.ctl("list_queues", "-q", "--no-table-headers", "name", "type", "durable", "messages",
                       node=next(n for n in range(self.size) if self.pid(n)))
        return [line.split("\t") for line in out.splitlines() if line.strip()]

    def kill(self, n: int) -> None:
        """SIGKILL node ``n`` by its PID: it dies as a crashed machine does."""
        proc = self.procs[n]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL) and our epmd, by PID. Idempotent."""
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.send_signal(signal.SIGTERM)
            self.epmd.wait(10)

    def log_tail(self, n: int, lines: int = 30) -> str:
        out = []
        for path in [self.workdir / f"node{n}.out", *sorted((self.workdir / f"node{n}" / "log").glob("*.log"))]:
            try:
                out += path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                pass
        return "\n".join(out[-2 * lines:])

    def __enter__(self) -> RabbitCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
