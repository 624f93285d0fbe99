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
import subprocess
from dataclasses import dataclass
from typing import Any, Sequence

from emulation.link import LinkConfig, LinkError, ShapedNetwork, add_shaper, probe_tcp, rerate_shaper, run_cmd
from emulation.netns_cleanup import kill_pids, pids_in_netns

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


class MultiClientLink(ShapedNetwork):
    """`up()`, `set_rate_kbps(slot, kbps)`, `popen_client(slot, ...)`, `popen_server(...)`, `down()`."""

    def __init__(self, clients: int, cfg: LinkConfig | None = None) -> None:
        if not 1 <= clients <= MAX_CLIENTS:
            raise LinkError(f"a shared network takes 1..{MAX_CLIENTS} clients, not {clients}")
        super().__init__(cfg)
        self.clients = clients
        self.slots: list[Slot] = []

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
        self._plan()
        p = self.prefix
        net = self._start_mininet()
        bridge = net.addSwitch(f"{p}b", dpid="1")
        net.addLink(self.server, bridge, intfName1=f"{p}s-eth0", intfName2=f"{p}b-s")
        for slot in self.slots:
            slot.node = self._add_host(slot.client_ns, slot.client_ip)
            net.addLink(slot.node, bridge, intfName1=f"{slot.client_ns}-eth0", intfName2=slot.shaped_dev)
        net.start()
        self._ns_run(self.server_ns, "sysctl", "-q", "-w", "net.ipv4.tcp_no_metrics_save=1")
        self._add_control_bridge()
        for slot in self.slots:
            self._tune_tcp(slot.client_ip)
            self._add_control_link(slot)
            slot.current_rate_bit = add_shaper(slot.shaped_dev, self.cfg)
        self._tune_server()
        self.check_connectivity()

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
        self._ns_run(slot.client_ns, "ip", "addr", "add", f"{slot.control_ip}/{CONTROL_PREFIX_LEN}", "dev",
                     client_end)
        self._ns_run(slot.client_ns, "ip", "link", "set", client_end, "up")

    def check_connectivity(self, timeout_s: float = 5.0) -> None:
        """One TCP connection from every client to the server (shaped path) and to the controller address."""
        for slot in self.slots:
            for listen_ns, listen_ip in ((self.server_ns, self.cfg.server_ip), (None, self.control_ip)):
                probe_tcp(slot.client_ns, listen_ns, listen_ip, timeout_s)

    # -- per slot ------------------------------------------------------------------------------------------
    def set_rate_kbps(self, slot: int, rate_kbps: float) -> int:
        """Change slot `slot`'s downlink rate in place; the applied rate in bit/s."""
        s = self.slots[slot]
        s.current_rate_bit = rerate_shaper(s.shaped_dev, rate_kbps, self.cfg)
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
