"""Bring up the emulated link, replay a trace and hold it, for debugging and for the clean-up tests.

    python -m emulation.link_tool --trace FILE [--trace-offset-s S] [--hold-s 60] [--rate-log F]

Once up it prints one JSON line (run id, namespaces, shaped interface, addresses) and flushes it, starts a
long `sleep` in each host (stand-ins for the server and the player, so clean-up has processes to find), then
replays until `--hold-s` has passed or it is stopped (Ctrl-C, SIGTERM: the link is removed on the way out).
Inspect it meanwhile with e.g. `ip netns exec nl<id>c ip addr` or `tc -s class show dev nl<id>b-c`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from emulation.link import EmulatedLink, LinkConfig
from emulation.replay_loop import TraceReplayer
from emulation.signals import terminate_raises
from emulation.trace_schedule import start_time_for_offset
from traces.readers import read_trace


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emulation.link_tool", description=__doc__.split("\n")[0])
    parser.add_argument("--trace", type=Path, required=True)
    parser.add_argument("--trace-offset-s", type=float, default=0.0)
    parser.add_argument("--hold-s", type=float, default=60.0)
    parser.add_argument("--rate-log", type=Path, default=None)
    parser.add_argument("--queue-packets", type=int, default=LinkConfig.queue_packets)
    ns = parser.parse_args(argv)
    trace = read_trace(ns.trace)
    start_s = start_time_for_offset(trace, ns.trace_offset_s)
    link = EmulatedLink(LinkConfig(initial_rate_kbps=float(trace.bandwidth_kbps[1]),
                                   queue_packets=ns.queue_packets))
    replayer = None
    with terminate_raises():
        try:
            link.up()
            assert link.state is not None
            for host in ("server", "client"):
                link.popen(host, ["sleep", "3600"], f"{host} stand-in")
            replayer = TraceReplayer(trace, start_s, link.set_rate_kbps, ns.rate_log).begin()
            print(json.dumps({"run_id": link.state.run_id, "namespaces": link.state.namespaces,
                              "root_links": link.state.root_links, "shaped_dev": link.shaped_dev,
                              "server_ip": link.cfg.server_ip, "client_ip": link.cfg.client_ip,
                              "control_ip": link.control_ip, "rtt_method": link.rtt_method,
                              "pids": [p.pid for p in link.state.processes]}), flush=True)
            deadline = time.monotonic() + ns.hold_s
            while time.monotonic() < deadline:
                if replayer.error is not None:
                    raise RuntimeError(f"replay loop failed: {replayer.error}")
                time.sleep(0.2)
        finally:
            if replayer is not None:
                replayer.stop()
            link.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
