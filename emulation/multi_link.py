"""One Mininet network with ONE server host and N client hosts, each client behind its own shaped downlink.

Used by `netllm replay --parallel N` (see `emulation.parallel`), where N sessions share one DASH server and
one decision service. Topology (no OpenFlow controller; the switch is a Linux bridge):

    server host <p>s-eth0 --- <p>b-s [bridge <p>b] <p>b-c0 --- <p>c0-eth0  client host 0   10.0.0.2/24
      10.0.0.1/24                              <p>b-c1 --- <p>c1-eth0  client host 1   10.0.0.3/24  ...
                                       HTB here ^ (one shaper per client port)
    control: <p>c<k>-ctl (in client k) --- <p>r<k> [root-namespace bridge <p>k, 172.31.2xx.1/26]

`<p>` is `nl<run id>` (see `emulation.runstate`); names stay within Linux's 15 characters for k < 100
(`nl` + 5 + `c` + 2 digits + `-eth0`). Each client's downlink is shaped exactly as `emulation.link` shapes
the single client's (same HTB class, queue, floor and re-rating in place, same TCP route metrics in the
server host, per client address), so a session sees the same link whether it runs alone or beside others.
Two differences, both needed because the hosts outlive one session:
- the server host does not save TCP metrics (`net.ipv4.tcp_no_metrics_save=1`, a per-namespace sysctl),
  so a session does not inherit the ssthresh its slot's previous session left behind;
- `reset_slot(k)` puts a slot back to its starting state between sessions (stray processes of the client
  host killed, rate back to the start-up rate).

Decision traffic never crosses a shaped link: every client has a control veth whose root end is enslaved
to one root-namespace bridge holding the single address the shared controller binds to. That bridge's /26
comes from `CONTROL_POOL` (172.31.224.0/20), disjoint from `emulation.link`'s /30 pool, so a single-client
link started meanwhile cannot pick an address inside it.

Everything is recorded in a run-state file before it is created, and `down()` (or `netllm cleanup` after a
crash) removes exactly that.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any, Sequence

from emulation.link import LinkConfig, LinkError, check_link_config, cleanup_pids_only, htb_class_args, \
    netem_available, queue_args, run_cmd
from emulation.mininet_compat import import_mininet
from emulation.netns_cleanup import CleanupReport, cleanup_stale, cleanup_state, kill_pids, pids_in_netns
from emulation.runstate import RunState, new_run_state

CONTROL_POOL = ipaddress.ip_network("172.31.224.0/20")
CONTROL_PREFIX_LEN = 26
MAX_CLIENTS = 60
"""Client addresses 10.0.0.2.. and control addresses in a /26 (62 hosts: the bridge + 60 clients)."""


@dataclass
class Slot:
    """One client host and its shaped port."""
    index: int
    client_ns: str
    client_ip: str
    shaped_dev: str
    control_ip: str
    node: Any = None
    current_rate_bit: int | None = None


class MultiClientLink:
    """`up()`, `set_rate_kbps(slot, kbps)`, `popen_client(slot, ...)`, `popen_server(...)`, `down()`."""

    def __init__(self, clients: int, cfg: LinkConfig | None = None) -> None:
        if not 1 <= clients <= MAX_CLIENTS:
            raise LinkError(f"a shared network takes 1..{MAX_CLIENTS} clients, not {clients}")
        self.clients = clients
        self.cfg = cfg or LinkConfig()
        self.state: RunState | None = None
        self.net: Any = None
        self.server: Any = None
        self.slots: list[Slot] = []
        self.control_ip = ""
        """The root-namespace address every client reaches unshaped (bind the controller here)."""
        self.rtt_method = "none"
        self.cleanup_report: CleanupReport | None = None
        self._state_lock = threading.Lock()  # run-state saves come from several session threads

    @property
    def prefix(self) -> str:
        assert self.state is not None
        return self.state.prefix

    @property
    def server_ns(self) -> str:
        return f"{self.prefix}s"

    # -- life cycle ----------------------------------------------------------------------------------------
    def up(self) -> "MultiClientLink":
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

    def _plan(self) -> None:
        """Record every name before anything is created."""
        state, p = self.state, self.prefix
        assert state is not None
        state.add_namespace(self.server_ns)
        root_links = [f"{p}b-s", f"{p}b", f"{p}k"]
        for k in range(self.clients):
            self.slots.append(Slot(k, f"{p}c{k}", str(ipaddress.ip_address(self.cfg.server_ip) + 1 + k),
                                   f"{p}b-c{k}", ""))
            state.add_namespace(f"{p}c{k}")
            root_links += [f"{p}b-c{k}", f"{p}r{k}"]
        for name in root_links:
            state.add_root_link(name)

    def _build(self) -> None:
        import_mininet()
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.nodelib import LinuxBridge

        self._plan()
        p = self.prefix
        self.rtt_method = ("none" if self.cfg.rtt_ms <= 0 else
                           "netem" if netem_available(self.state) else "server-first-byte-delay")
        setLogLevel("error")
        Mininet.inited = True  # no host-wide sysctls / rlimits (see emulation.link)
        net = Mininet(topo=None, build=False, controller=None, switch=LinuxBridge, autoSetMacs=False,
                      waitConnected=False)
        self.net = net
        self.server = net.addHost(self.server_ns, ip=f"{self.cfg.server_ip}/24")
        self._pin(self.server)
        bridge = net.addSwitch(f"{p}b", dpid="1")
        net.addLink(self.server, bridge, intfName1=f"{p}s-eth0", intfName2=f"{p}b-s")
        for slot in self.slots:
            slot.node = net.addHost(slot.client_ns, ip=f"{slot.client_ip}/24")
            self._pin(slot.node)
            net.addLink(slot.node, bridge, intfName1=f"{slot.client_ns}-eth0", intfName2=slot.shaped_dev)
        net.start()
        self._ns(self.server_ns, "ip", "link", "set", "dev", f"{p}s-eth0", "gso_max_size", str(self.cfg.mtu),
                 "gso_max_segs", "1")
        self._ns(self.server_ns, "sysctl", "-q", "-w", "net.ipv4.tcp_no_metrics_save=1")
        self._add_control_bridge()
        for slot in self.slots:
            self._tune_tcp(slot)
            self._add_control_link(slot)
            self._add_shaper(slot)
        if self.rtt_method == "netem":
            self._ns(self.server_ns, "tc", "qdisc", "add", "dev", f"{p}s-eth0", "root", "netem", "delay",
                     f"{self.cfg.rtt_ms}ms", "limit", "10000")
        self.check_connectivity()

    def _pin(self, host: Any) -> None:
        assert self.state is not None
        self.state.add_process(host.pid, f"mininet shell {host.name}")
        run_cmd(["ip", "netns", "attach", host.name, str(host.pid)])

    def _ns(self, ns: str, *args: str) -> subprocess.CompletedProcess:
        return run_cmd(["ip", "netns", "exec", ns, *args])

    def cwnd_clamp_packets(self) -> int:
        """As `emulation.link.EmulatedLink.cwnd_clamp_packets`."""
        if self.cfg.cwnd_clamp_packets is not None:
            return self.cfg.cwnd_clamp_packets
        if self.rtt_method == "netem":
            return 0
        packets = self.cfg.queue_packets if self.cfg.queue_delay_ms <= 0 else self.cfg.queue_min_packets
        return max(4, packets * 3 // 4)

    def _tune_tcp(self, slot: Slot) -> None:
        route = ["ip", "route", "replace", f"{slot.client_ip}/32", "dev", f"{self.prefix}s-eth0"]
        if self.cfg.congestion_control:
            route += ["congctl", self.cfg.congestion_control]
        if clamp := self.cwnd_clamp_packets():
            route += ["cwnd", "lock", str(clamp)]
        self._ns(self.server_ns, *route)

    def _pick_control_subnet(self) -> ipaddress.IPv4Network:
        used = run_cmd(["ip", "-4", "-o", "addr", "show"]).stdout
        subnets = list(CONTROL_POOL.subnets(new_prefix=CONTROL_PREFIX_LEN))
        assert self.state is not None
        start = int.from_bytes(self.state.run_id.encode(), "big") % len(subnets)
        for k in range(len(subnets)):
            net = subnets[(start + k) % len(subnets)]
            if not any(f"inet {h}/" in used for h in net.hosts()):
                return net
        raise LinkError(f"no free /{CONTROL_PREFIX_LEN} left in {CONTROL_POOL} for the control bridge")

    def _add_control_bridge(self) -> None:
        subnet = self._pick_control_subnet()
        self._control_hosts = list(subnet.hosts())
        self.control_ip = str(self._control_hosts[0])
        br = f"{self.prefix}k"
        run_cmd(["ip", "link", "add", br, "type", "bridge"])
        run_cmd(["ip", "addr", "add", f"{self.control_ip}/{CONTROL_PREFIX_LEN}", "dev", br])
        run_cmd(["ip", "link", "set", br, "up"])

    def _add_control_link(self, slot: Slot) -> None:
        root_end, client_end = f"{self.prefix}r{slot.index}", f"{slot.client_ns}-ctl"
        slot.control_ip = str(self._control_hosts[1 + slot.index])
        run_cmd(["ip", "link", "add", root_end, "type", "veth", "peer", "name", client_end,
                 "netns", slot.client_ns])
        run_cmd(["ip", "link", "set", root_end, "master", f"{self.prefix}k"])
        run_cmd(["ip", "link", "set", root_end, "up"])
        self._ns(slot.client_ns, "ip", "addr", "add", f"{slot.control_ip}/{CONTROL_PREFIX_LEN}", "dev",
                 client_end)
        self._ns(slot.client_ns, "ip", "link", "set", client_end, "up")

    def _add_shaper(self, slot: Slot) -> None:
        dev, rate = slot.shaped_dev, self.cfg.initial_rate_kbps
        run_cmd(["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1"])
        run_cmd(["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:1",
                 *htb_class_args(rate, self.cfg)])
        run_cmd(["tc", "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:",
                 *queue_args(rate, self.cfg)])
        slot.current_rate_bit = int(round(max(self.cfg.min_rate_kbit, rate) * 1000))

    def check_connectivity(self, timeout_s: float = 5.0) -> None:
        """One TCP connection from every client to the server (shaped path) and to the controller address."""
        for slot in self.slots:
            for listen_ns, listen_ip in ((self.server_ns, self.cfg.server_ip), (None, self.control_ip)):
                _probe(slot.client_ns, listen_ns, listen_ip, timeout_s)

    # -- per slot ------------------------------------------------------------------------------------------
    def set_rate_kbps(self, slot: int, rate_kbps: float) -> int:
        """Change slot `slot`'s downlink rate in place; the applied rate in bit/s."""
        s = self.slots[slot]
        args = htb_class_args(rate_kbps, self.cfg)
        change = ["class", "change", "dev", s.shaped_dev, "parent", "1:", "classid", "1:1", *args]
        if self.cfg.queue_delay_ms > 0:
            resize = ["qdisc", "change", "dev", s.shaped_dev, "parent", "1:1", "handle", "10:",
                      *queue_args(rate_kbps, self.cfg)]
            out = subprocess.run(["tc", "-batch", "-"], input=f"{' '.join(change)}\n{' '.join(resize)}\n",
                                 capture_output=True, text=True, timeout=30)
            if out.returncode != 0:
                raise LinkError(f"tc -batch on {s.shaped_dev} failed: {out.stderr.strip()}")
        else:
            run_cmd(["tc", *change])
        s.current_rate_bit = int(args[2].removesuffix("bit"))
        return s.current_rate_bit

    def reset_slot(self, slot: int, rate_kbps: float) -> None:
        """Between sessions: kill whatever still runs in the client host (not its shell), set the rate."""
        s = self.slots[slot]
        strays = [pid for pid in pids_in_netns(s.client_ns) if pid != s.node.pid]
        if strays:
            kill_pids(strays, grace_s=3.0)
        self.set_rate_kbps(slot, rate_kbps)

    def popen_client(self, slot: int, argv: Sequence[str], what: str, **kwargs: Any) -> subprocess.Popen:
        return self._popen(self.slots[slot].node, argv, what, **kwargs)

    def popen_server(self, argv: Sequence[str], what: str, **kwargs: Any) -> subprocess.Popen:
        return self._popen(self.server, argv, what, **kwargs)

    def _popen(self, node: Any, argv: Sequence[str], what: str, **kwargs: Any) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        with self._state_lock:
            proc = node.popen(list(argv), **kwargs)
            assert self.state is not None
            self.state.add_process(proc.pid, what)
        return proc

    def record_process(self, pid: int, what: str) -> None:
        with self._state_lock:
            assert self.state is not None
            self.state.add_process(pid, what)

    def down(self) -> CleanupReport | None:
        """Stop every process, remove every namespace, interface and qdisc of this run. Idempotent."""
        if self.state is None:
            return self.cleanup_report
        state = self.state
        if self.net is not None:
            cleanup_pids_only(state)
            try:
                self.net.stop()
            except Exception as exc:  # the state-driven clean-up below removes what Mininet left
                print(f"netllm: Mininet stop failed ({exc}); removing leftovers directly", file=sys.stderr)
            self.net = None
        self.cleanup_report = cleanup_state(state)
        if self.cleanup_report.errors:
            print(f"netllm: clean-up incomplete: {self.cleanup_report.describe()}", file=sys.stderr)
        self.state = None
        return self.cleanup_report

    def __enter__(self) -> "MultiClientLink":
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


def _probe(client_ns: str, listen_ns: str | None, listen_ip: str, timeout_s: float) -> None:
    """A listener on listen_ip (in listen_ns or the root namespace) that one connection from client_ns
    must reach (this machine has no ping)."""
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
