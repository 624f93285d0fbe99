"""A two-host Mininet network whose server->client direction is shaped by HTB and re-rated in place.

Topology (no OpenFlow controller; the switch is a Linux bridge, `mininet.nodelib.LinuxBridge`):

    server host  <p>s-eth0 --- <p>b-s [bridge <p>b] <p>b-c --- <p>c-eth0  client host
      10.0.0.1/24                       HTB here ^                      10.0.0.2/24
                                                            <p>c-ctl --- <p>r  root namespace (unshaped)

`<p>` is `nl<run id>`. The DOWNLINK is shaped on the egress of the bridge port facing the client: an HTB
root qdisc (`default 1`, so no classifier is needed) with one class 1:1 whose rate = ceil = the trace
rate, and a bounded pfifo (or bfifo) child queue. `set_rate_kbps` changes that class in place
(`tc class change`), so queued packets and TCP state survive a rate change. The uplink is not shaped.

HTB parameters (why): quantum is fixed at one full frame (MTU + 14 B) because there is one class and a
rate-derived quantum (rate/r2q) is out of the kernel's accepted range at both ends of 8 kbit..50 Mbit;
burst = cburst = max(1 frame, rate x `burst_ms` (2 ms)) so that at high rates a late timer tick does not lose
tokens, while at low rates the burst a transfer gets after an idle period stays at one frame (2 frames of
burst measured as +1.5% on 150 KB chunks at 0.5 Mbit/s). TSO/GSO are turned off on the server's
interface (gso_max_segs 1) so HTB meters MTU-sized packets, not 64 KB super-packets that would make low
rates bursty. Rates below `min_rate_kbit` (including a trace's zero bandwidth) are raised to it: HTB has
no zero rate, and a lower one would leave seconds of token debt that delays the next, higher rate.

Queue and TCP: the queue defaults to a pfifo of `queue_packets` = 64 packets (97 KB: 2.6 s at 300 kbit/s,
0.2 s at 4 Mbit/s, 16 ms at 50 Mbit/s); `queue_delay_ms` > 0 switches to a bfifo re-sized with the rate.
Without netem the TCP path has no propagation delay, so loss recovery is paced by queueing delay alone;
measured on this kernel (whose default congestion control is BBR) that gave stalls of many seconds after
rate drops. The server's route to the client therefore pins `congctl cubic` (Pensieve-era Linux default)
and, without netem, clamps its congestion window below the queue (`cwnd lock`, 3/4 of the queue): with no
propagation delay any window of a few packets already fills the link, and a window that never exceeds the
queue never overflows it, so transfers run at the shaped rate (see benchmarks/bench_fidelity.py).

Decision traffic (player -> controller) never crosses the shaped link: the client host has a second veth
(`<p>c-ctl`) to the root namespace (`<p>r`, a /30 out of 172.31.240.0/20 chosen per run), where the
controller runs. RTT: netem is used (delay on the server's egress, i.e. on data and responses) when the
kernel has it; otherwise the caller emulates RTT at the server as a first-byte delay (`rtt_method`).

Everything is recorded in an `emulation.runstate` file before it is created and removed by `down()` (or by
`emulation.netns_cleanup` after a crash).
"""

from __future__ import annotations

import ipaddress
import math
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any, Self, Sequence

from emulation.mininet_compat import import_mininet
from emulation.netns_cleanup import CleanupReport, cleanup_stale, cleanup_state
from emulation.runstate import RunState, new_run_state

ETH_HEADER_BYTES = 14
CONTROL_POOL = ipaddress.ip_network("172.31.240.0/20")


class LinkError(RuntimeError):
    """The emulated network could not be built or changed; the message has the failing command."""


@dataclass
class LinkConfig:
    initial_rate_kbps: float = 5000.0
    """Downlink rate until the first `set_rate_kbps`."""
    queue_packets: int = 64
    """pfifo limit of the downlink queue (see module docstring)."""
    queue_delay_ms: float = 0.0
    """If > 0, the queue is a bfifo holding this many milliseconds at the current rate (re-sized at every rate
    change, never below `queue_min_packets` frames) instead of the fixed pfifo."""
    queue_min_packets: int = 8
    min_rate_kbit: float = 8.0
    """Floor of the HTB rate; a trace's zero (or tiny) bandwidth becomes this."""
    burst_ms: float = 2.0
    """HTB burst in time at the current rate (at least one frame)."""
    congestion_control: str = "cubic"
    """TCP congestion control in the two hosts (per-namespace sysctl; the host's own setting is untouched)."""
    cwnd_clamp_packets: int | None = None
    """Clamp of the server's congestion window towards the client (route metric `cwnd lock`): None = 3/4 of
    the queue when the RTT is not emulated by netem (see module docstring), 0 = no clamp."""
    mtu: int = 1500
    rtt_ms: float = 0.0
    """Round-trip delay added with netem when available (see `rtt_method`)."""
    server_ip: str = "10.0.0.1"
    client_ip: str = "10.0.0.2"


MAX_RTT_MS = 10_000.0
"""Far above any real path's RTT; netem (or the server's first-byte delay) with more only hangs requests."""


def check_link_config(cfg: LinkConfig) -> None:
    """Refuse settings tc would take but that make no sense: a NaN, infinite, negative or huge RTT (a
    negative one was silently no RTT at all), or a non-finite rate."""
    if not (math.isfinite(cfg.rtt_ms) and 0 <= cfg.rtt_ms <= MAX_RTT_MS):
        raise LinkError(f"rtt_ms must be in 0..{MAX_RTT_MS:g}, got {cfg.rtt_ms}")
    for name in ("initial_rate_kbps", "min_rate_kbit", "burst_ms", "queue_delay_ms"):
        value = getattr(cfg, name)
        if not (math.isfinite(value) and value >= 0):
            raise LinkError(f"{name} must be a finite number >= 0, got {value}")


def run_cmd(args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        detail = out.stderr.strip() or out.stdout.strip()
        raise LinkError(f"`{' '.join(args)}` failed ({out.returncode}): {detail}")
    return out


_NETEM: bool | None = None


def netem_available(state: RunState | None = None) -> bool:
    """Whether this kernel has sch_netem, tried once per process on a throwaway veth pair."""
    global _NETEM
    if _NETEM is not None:
        return _NETEM
    name = f"{state.prefix}t" if state else f"nlchk{os.getpid() % 100000}"
    if state:
        state.add_root_link(name)
    run_cmd(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"])
    try:
        _NETEM = run_cmd(["tc", "qdisc", "add", "dev", name, "root", "netem", "delay", "1ms"],
                         check=False).returncode == 0
    finally:
        run_cmd(["ip", "link", "del", name], check=False)
    return _NETEM


def htb_class_args(rate_kbps: float, cfg: LinkConfig) -> list[str]:
    """The `htb rate ... ceil ... burst ... cburst ... quantum ...` part of a tc class command."""
    rate_bit = max(cfg.min_rate_kbit * 1000.0, rate_kbps * 1000.0)
    frame = cfg.mtu + ETH_HEADER_BYTES
    burst = max(frame, int(math.ceil(rate_bit * cfg.burst_ms / 1000.0 / 8.0)))
    rate = f"{int(round(rate_bit))}bit"
    return ["htb", "rate", rate, "ceil", rate, "burst", f"{burst}b", "cburst", f"{burst}b",
            "quantum", str(frame)]


def queue_args(rate_kbps: float, cfg: LinkConfig) -> list[str]:
    """The child queue: a fixed pfifo, or a bfifo sized to `queue_delay_ms` at this rate."""
    if cfg.queue_delay_ms <= 0:
        return ["pfifo", "limit", str(cfg.queue_packets)]
    rate_bit = max(cfg.min_rate_kbit * 1000.0, rate_kbps * 1000.0)
    floor_bytes = cfg.queue_min_packets * (cfg.mtu + ETH_HEADER_BYTES)
    limit = max(floor_bytes, int(rate_bit * cfg.queue_delay_ms / 8000.0))
    return ["bfifo", "limit", str(limit)]


def _pick_control_subnet(run_id: str) -> ipaddress.IPv4Network:
    used = run_cmd(["ip", "-4", "-o", "addr", "show"]).stdout
    subnets = list(CONTROL_POOL.subnets(new_prefix=30))
    start = int.from_bytes(run_id.encode(), "big") % len(subnets)
    for k in range(len(subnets)):
        net = subnets[(start + k) % len(subnets)]
        if not any(str(h) in used for h in net.hosts()):
            return net
    raise LinkError(f"no free /30 left in {CONTROL_POOL} for the control link")


def add_shaper(dev: str, cfg: LinkConfig) -> int:
    """HTB root + class 1:1 at the start-up rate + the bounded child queue on `dev`; the rate in bit/s."""
    rate = cfg.initial_rate_kbps
    run_cmd(["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1"])
    run_cmd(["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", *htb_class_args(rate, cfg)])
    run_cmd(["tc", "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *queue_args(rate, cfg)])
    return int(round(max(cfg.min_rate_kbit, rate) * 1000))


def rerate_shaper(dev: str, rate_kbps: float, cfg: LinkConfig) -> int:
    """Change `dev`'s class 1:1 in place (queued packets and TCP state survive); the rate in bit/s."""
    args = htb_class_args(rate_kbps, cfg)
    change = ["class", "change", "dev", dev, "parent", "1:", "classid", "1:1", *args]
    if cfg.queue_delay_ms > 0:
        resize = ["qdisc", "change", "dev", dev, "parent", "1:1", "handle", "10:",
                  *queue_args(rate_kbps, cfg)]
        # One tc process for both changes (tc -batch reads commands from stdin).
        out = subprocess.run(["tc", "-batch", "-"], input=f"{' '.join(change)}\n{' '.join(resize)}\n",
                             capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            commands = f"{' '.join(change)}; {' '.join(resize)}"
            raise LinkError(f"tc -batch ({commands}) failed: {out.stderr.strip()}")
    else:
        run_cmd(["tc", *change])
    return int(args[2].removesuffix("bit"))


def probe_tcp(client_ns: str, listen_ns: str | None, listen_ip: str, timeout_s: float) -> None:
    """One TCP connection from `client_ns` to a listener on `listen_ip` (in `listen_ns`, or the root
    namespace) must succeed. (A TCP probe because this machine has no ping.)"""
    code = (f"import socket; s = socket.socket(); s.bind(({listen_ip!r}, 0)); s.listen(1); "
            f"print(s.getsockname()[1], flush=True); s.settimeout({timeout_s}); s.accept()")
    prefix = ["ip", "netns", "exec", listen_ns] if listen_ns else []
    listener = subprocess.Popen([*prefix, sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                stderr=subprocess.DEVNULL)
    try:
        port = int(listener.stdout.readline().strip() or 0)  # type: ignore[union-attr]
        probe = f"import socket; socket.create_connection(({listen_ip!r}, {port}), timeout={timeout_s})"
        out = run_cmd(["ip", "netns", "exec", client_ns, sys.executable, "-c", probe], check=False)
        if port == 0 or out.returncode != 0:
            raise LinkError(f"no TCP connectivity from {client_ns} to {listen_ip}: "
                            f"{out.stderr.strip()[-300:]}")
    finally:
        listener.kill()
        listener.wait()


class ShapedNetwork:
    """What both emulated networks (`EmulatedLink`, `emulation.multi_link.MultiClientLink`) share: the run
    state, bring-up and idempotent tear-down, Mininet hosts pinned to named namespaces, the RTT method, the
    server's TCP route metrics towards a client, and recorded processes. Subclasses build the topology."""

    def __init__(self, cfg: LinkConfig | None = None) -> None:
        self.cfg = cfg or LinkConfig()
        self.state: RunState | None = None
        self.net: Any = None
        self.server: Any = None
        self.control_ip: str = ""
        """The root-namespace address the clients reach unshaped (bind the controller here)."""
        self.rtt_method: str = "none"
        self.cleanup_report: CleanupReport | None = None
        self._state_lock = threading.Lock()  # run-state saves may come from several session threads

    @property
    def prefix(self) -> str:
        assert self.state is not None
        return self.state.prefix

    @property
    def server_ns(self) -> str:
        return f"{self.prefix}s"

    # -- life cycle ----------------------------------------------------------------------------------------
    def up(self) -> Self:
        check_link_config(self.cfg)
        if os.geteuid() != 0:
            raise LinkError("the link emulator needs root (network namespaces, tc)")
        for report in cleanup_stale():
            print(f"netllm: cleaned up after a crashed emulator {report.describe()}", file=sys.stderr)
        self.state = new_run_state()
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        raise NotImplementedError

    def _start_mininet(self) -> Any:
        """An empty Mininet (Linux-bridge switches, no OpenFlow controller) with the server host added."""
        import_mininet()
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.nodelib import LinuxBridge

        self._choose_rtt_method()
        # LinuxBridge warns about bridge-nf-call-iptables at "warning"; connectivity is checked instead.
        setLogLevel("error")
        # Mininet.init() would raise host-wide sysctls and rlimits (fixLimits) for large networks; a few
        # hosts need none of that, and this project leaves global settings alone.
        Mininet.inited = True
        self.net = Mininet(topo=None, build=False, controller=None, switch=LinuxBridge, autoSetMacs=False,
                           waitConnected=False)
        self.server = self._add_host(self.server_ns, self.cfg.server_ip)
        return self.net

    def _add_host(self, ns: str, ip: str) -> Any:
        host = self.net.addHost(ns, ip=f"{ip}/24")
        # Give the host's (anonymous) namespace its `ip netns` name, to find and remove it later.
        assert self.state is not None
        self.state.add_process(host.pid, f"mininet shell {host.name}")
        run_cmd(["ip", "netns", "attach", host.name, str(host.pid)])
        return host

    def _tune_server(self) -> None:
        """After net.start(): MTU-sized packets through the shapers (see module docstring), and the RTT as
        netem on the server's egress when that is the method."""
        p = self.prefix
        self._ns_run(self.server_ns, "ip", "link", "set", "dev", f"{p}s-eth0",
                     "gso_max_size", str(self.cfg.mtu), "gso_max_segs", "1")
        if self.rtt_method == "netem":
            self._ns_run(self.server_ns, "tc", "qdisc", "add", "dev", f"{p}s-eth0", "root", "netem", "delay",
                         f"{self.cfg.rtt_ms}ms", "limit", "10000")

    def _choose_rtt_method(self) -> None:
        if self.cfg.rtt_ms <= 0:
            self.rtt_method = "none"
        elif netem_available(self.state):
            self.rtt_method = "netem"
        else:
            self.rtt_method = "server-first-byte-delay"

    def cwnd_clamp_packets(self) -> int:
        """The server's congestion-window clamp towards a client (0: none; see module docstring)."""
        if self.cfg.cwnd_clamp_packets is not None:
            return self.cfg.cwnd_clamp_packets
        if self.rtt_method == "netem":
            return 0
        packets = self.cfg.queue_packets if self.cfg.queue_delay_ms <= 0 else self.cfg.queue_min_packets
        return max(4, packets * 3 // 4)

    def _tune_tcp(self, client_ip: str) -> None:
        """Congestion control and cwnd clamp of the server's connections to `client_ip`, as route metrics (a
        namespace may not pick a congestion control outside the host's allowed list by sysctl)."""
        route = ["ip", "route", "replace", f"{client_ip}/32", "dev", f"{self.prefix}s-eth0"]
        if self.cfg.congestion_control:
            route += ["congctl", self.cfg.congestion_control]
        if clamp := self.cwnd_clamp_packets():
            route += ["cwnd", "lock", str(clamp)]
        self._ns_run(self.server_ns, *route)

    def _ns_run(self, ns: str, *args: str) -> subprocess.CompletedProcess:
        return run_cmd(["ip", "netns", "exec", ns, *args])

    def _popen(self, node: Any, argv: Sequence[str], what: str, **kwargs: Any) -> subprocess.Popen:
        """Start a process in a host (its own session); it is recorded for clean-up."""
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        with self._state_lock:
            proc = node.popen(list(argv), **kwargs)
            assert self.state is not None
            self.state.add_process(proc.pid, what)
        return proc

    def record_process(self, pid: int, what: str) -> None:
        """Record a process started elsewhere (e.g. the controller in the root namespace)."""
        with self._state_lock:
            assert self.state is not None
            self.state.add_process(pid, what)

    def down(self) -> CleanupReport | None:
        """Stop every process, remove every namespace, interface and qdisc of this run. Idempotent."""
        if self.state is None:
            return self.cleanup_report
        state = self.state
        if self.net is not None:
            # Kill our processes before Mininet closes the hosts' shells; then let Mininet tidy its objects.
            cleanup_pids_only(state)
            try:
                self.net.stop()
            except Exception as exc:  # clean-up below removes whatever Mininet left
                print(f"netllm: Mininet stop failed ({exc}); removing leftovers directly", file=sys.stderr)
            self.net = None
        self.cleanup_report = cleanup_state(state)
        if self.cleanup_report.errors:
            print(f"netllm: clean-up incomplete: {self.cleanup_report.describe()}", file=sys.stderr)
        self.state = None
        return self.cleanup_report

    def __enter__(self) -> Self:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


class EmulatedLink(ShapedNetwork):
    """Bring up with `up()` (or `with EmulatedLink(cfg) as link:`), re-rate with `set_rate_kbps`, `down()`."""

    def __init__(self, cfg: LinkConfig | None = None) -> None:
        super().__init__(cfg)
        self.client: Any = None
        self.client_control_ip: str = ""
        self.current_rate_bit: int | None = None

    @property
    def shaped_dev(self) -> str:
        return f"{self.prefix}b-c"

    @property
    def client_ns(self) -> str:
        return f"{self.prefix}c"

    def _build(self) -> None:
        state, p = self.state, self.prefix
        assert state is not None
        for ns in (self.server_ns, self.client_ns):
            state.add_namespace(ns)
        # Root-namespace ends of every veth too: deleting them removes the pairs at once, whereas a deleted
        # namespace takes its veths down asynchronously.
        for name in (f"{p}b-s", f"{p}b-c", f"{p}r", f"{p}b"):
            state.add_root_link(name)
        net = self._start_mininet()
        self.client = self._add_host(self.client_ns, self.cfg.client_ip)
        bridge = net.addSwitch(f"{p}b", dpid="1")
        net.addLink(self.server, bridge, intfName1=f"{p}s-eth0", intfName2=f"{p}b-s")
        net.addLink(self.client, bridge, intfName1=f"{p}c-eth0", intfName2=f"{p}b-c")
        net.start()
        self._tune_tcp(self.cfg.client_ip)
        self._add_control_link()
        self.current_rate_bit = add_shaper(self.shaped_dev, self.cfg)
        self._tune_server()
        self.check_connectivity()

    def _add_control_link(self) -> None:
        p = self.prefix
        subnet = _pick_control_subnet(self.state.run_id)  # type: ignore[union-attr]
        root_ip, client_ip = (str(h) for h in subnet.hosts())
        run_cmd(["ip", "link", "add", f"{p}r", "type", "veth", "peer", "name", f"{p}c-ctl",
                 "netns", self.client_ns])
        run_cmd(["ip", "addr", "add", f"{root_ip}/30", "dev", f"{p}r"])
        run_cmd(["ip", "link", "set", f"{p}r", "up"])
        self._ns_run(self.client_ns, "ip", "addr", "add", f"{client_ip}/30", "dev", f"{p}c-ctl")
        self._ns_run(self.client_ns, "ip", "link", "set", f"{p}c-ctl", "up")
        self.control_ip, self.client_control_ip = root_ip, client_ip

    def check_connectivity(self, timeout_s: float = 5.0) -> None:
        """One TCP connection over each path (data via the bridge, control via the root veth)."""
        for listen_ns, listen_ip in ((self.server_ns, self.cfg.server_ip), (None, self.control_ip)):
            probe_tcp(self.client_ns, listen_ns, listen_ip, timeout_s)

    def set_rate_kbps(self, rate_kbps: float) -> int:
        """Change the downlink rate in place; returns the applied rate in bit/s (after the floor)."""
        self.current_rate_bit = rerate_shaper(self.shaped_dev, rate_kbps, self.cfg)
        return self.current_rate_bit

    def popen(self, host: str, argv: Sequence[str], what: str, **kwargs: Any) -> subprocess.Popen:
        """Start a process in the server or client host (its own session); it is recorded for clean-up."""
        return self._popen({"server": self.server, "client": self.client}[host], argv, what, **kwargs)


def cleanup_pids_only(state: RunState) -> None:
    from emulation.netns_cleanup import kill_pids, pids_in_netns
    from emulation.runstate import process_alive

    shells = {p.pid for p in state.processes if p.what.startswith("mininet shell")}
    recorded = [p.pid for p in state.processes if p.pid not in shells and process_alive(p.pid, p.start_ticks)]
    in_ns = [pid for ns in state.namespaces for pid in pids_in_netns(ns) if pid not in shells]
    kill_pids(recorded + in_ns)
