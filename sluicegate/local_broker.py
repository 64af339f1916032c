"""A real, single-node Apache Kafka broker (KRaft, broker+controller) for development and tests.

No Docker engine and no Kafka OS package are assumed. The launcher:

1. resolves ``org.apache.kafka:kafka_2.13:<KAFKA_VERSION>`` and its runtime dependencies plus
   a logging backend from Maven Central with Maven, into a cache outside the repository
   (``$SLUICEGATE_CACHE`` or ``~/.cache/sluicegate/kafka-<version>/libs``);
2. writes a minimal ``server.properties`` into a fresh (or given) data directory and formats
   KRaft storage with ``kafka.tools.StorageTool``;
3. starts ``kafka.Kafka`` on 127.0.0.1 (free ports by default) and waits until an
   ``AdminClient`` answers;
4. stops it with SIGTERM (SIGKILL after a grace period), also at interpreter exit.

Why 3.9.1: see the README ("Choice of Kafka version").
"""

from __future__ import annotations

import atexit
import base64
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

KAFKA_VERSION = "3.9.1"
SCALA_VERSION = "2.13"
DEPENDENCY_PLUGIN = "3.8.1"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.sluicegate</groupId><artifactId>kafka-broker-libs</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_{scala}</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>1.7.36</version></dependency>
    <dependency><groupId>ch.qos.reload4j</groupId><artifactId>reload4j</artifactId><version>1.2.25</version></dependency>
  </dependencies>
  <build><plugins><plugin>
    <groupId>org.apache.maven.plugins</groupId><artifactId>maven-dependency-plugin</artifactId>
    <version>{plugin}</version>
  </plugin></plugins></build>
</project>
"""

_LOG4J = """log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=WARN
log4j.logger.org.apache.kafka=WARN
"""


class BrokerError(RuntimeError):
    """The local broker could not be prepared or started; the message says what to do."""


def cache_dir() -> Path:
    root = os.environ.get("SLUICEGATE_CACHE") or os.path.join(Path.home(), ".cache", "sluicegate")
    return Path(root) / f"kafka-{KAFKA_VERSION}"


def _require(tool: str, install_hint: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise BrokerError(f"`{tool}` was not found on PATH. {install_hint}")
    return path


def check_java() -> str:
    java = _require(
        "java",
        "Install a Java 17+ runtime, e.g. `apt-get install openjdk-17-jre-headless`.",
    )
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    try:
        major = int(out.split('"')[1].split(".")[0])
    except (IndexError, ValueError):
        return java
    if major < 17:
        raise BrokerError(
            f"Java {major} found; the Kafka broker needs Java 17 or newer "
            "(`apt-get install openjdk-17-jre-headless`)."
        )
    return java


def fetch_broker_jars(quiet: bool = True) -> Path:
    """Resolve the broker's jars into the cache (once) and return the ``libs`` folder."""
    libs = cache_dir() / "libs"
    marker = cache_dir() / ".complete"
    if marker.exists() and any(libs.glob("kafka_*.jar")):
        return libs
    mvn = _require("mvn", "Install Apache Maven 3.8+, e.g. `apt-get install maven`.")
    check_java()
    work = cache_dir() / "resolve"
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(
        _POM.format(scala=SCALA_VERSION, kafka=KAFKA_VERSION, plugin=DEPENDENCY_PLUGIN)
    )
    tmp_libs = cache_dir() / "libs.partial"
    shutil.rmtree(tmp_libs, ignore_errors=True)
    cmd = [
        mvn, "-B", "-q" if quiet else "-ntp", "-f", str(work / "pom.xml"),
        f"org.apache.maven.plugins:maven-dependency-plugin:{DEPENDENCY_PLUGIN}:copy-dependencies",
        "-DincludeScope=runtime", f"-DoutputDirectory={tmp_libs}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BrokerError(
            "Maven could not fetch Apache Kafka "
            f"{KAFKA_VERSION} from Maven Central (exit {proc.returncode}):\n"
            + (proc.stdout + proc.stderr)[-3000:]
        )
    shutil.rmtree(libs, ignore_errors=True)
    tmp_libs.rename(libs)
    marker.write_text(KAFKA_VERSION)
    return libs


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_id() -> str:
    """22-character base64url id; never starts with '-' (the formatter would read an option)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if cid[0] != "-":
            return cid


@dataclass
class LocalBroker:
    """One Kafka process. Use as a context manager or call ``start()``/``stop()``."""

    port: int = 0
    data_dir: Path | None = None
    heap: str = "768m"
    startup_timeout: float = 90.0
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _own_dir: bool = field(default=False, init=False, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "LocalBroker":
        libs = fetch_broker_jars()
        java = check_java()
        if self.port == 0:
            self.port = free_port()
        controller_port = free_port()
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="sluicegate-kafka-"))
            self._own_dir = True
        self.data_dir = Path(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logs = self.data_dir / "kraft-logs"
        props = self.data_dir / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={logs}",
                    "num.partitions=1",
                    "default.replication.factor=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "transaction.state.log.num.partitions=1",
                    "min.insync.replicas=1",
                    "group.initial.rebalance.delay.ms=0",
                    "log.cleaner.dedupe.buffer.size=33554432",
                    "auto.create.topics.enable=true",
                    # Step outputs and run state can reach several MiB (see README limits).
                    "message.max.bytes=52428800",
                    "replica.fetch.max.bytes=52428800",
                    "",
                ]
            )
        )
        (self.data_dir / "log4j.properties").write_text(_LOG4J)
        classpath = f"{libs}/*"
        fmt = subprocess.run(
            [java, "-cp", classpath, "kafka.tools.StorageTool", "format",
             "-t", _cluster_id(), "-c", str(props), "--ignore-formatted"],
            capture_output=True, text=True,
        )
        if fmt.returncode != 0:
            raise BrokerError(f"formatting KRaft storage failed:\n{fmt.stdout}{fmt.stderr}")
        self._log = open(self.data_dir / "broker.log", "ab")
        self._proc = subprocess.Popen(
            [java, "-Xms256m", f"-Xmx{self.heap}", "-XX:+UseG1GC",
             f"-Dlog4j.configuration=file:{self.data_dir / 'log4j.properties'}",
             "-cp", classpath, "kafka.Kafka", str(props)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        atexit.register(self.stop)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + self.startup_timeout
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                tail = (self.data_dir / "broker.log").read_text(errors="replace")[-3000:]
                raise BrokerError(f"the Kafka broker exited with {self._proc.returncode}:\n{tail}")
            try:
                md = admin.list_topics(timeout=1)
                if md.brokers:
                    return
            except Exception:
                time.sleep(0.2)
        self.stop()
        raise BrokerError(f"the Kafka broker did not answer within {self.startup_timeout:.0f} s")

    def stop(self, grace: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            except ProcessLookupError:
                pass
        if proc is not None:
            self._log.close()
        if self._own_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self._own_dir = False

    def __enter__(self) -> "LocalBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
