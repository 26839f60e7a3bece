#!/usr/bin/env bash
# Where a TCP flow's gap after a failover comes from, without QEMU: the lab's own traffic
# agent (client and server) in network namespaces, client -- router -- server, and the
# router dropping every forwarded packet for OUTAGE ms (what a failover is to the flows).
# Per run: the longest gap of the 8 TCP flows and of the UDP flow (the path's own
# outage). Modes: the agent's default stop-and-wait flows, and --stream; optionally the
# lab hosts' TCP tuned (RTO_MIN: route rto_min on client and server; THIN=1:
# tcp_thin_linear_timeouts). Needs root; namespaces are removed on exit.
# Usage: scripts/lab-gap.sh [OUTAGE_MS] [RUNS]   (default 330 ms, 5 runs per mode)
# Env: TWINWALL (default target/debug/twinwall), MODES (default "stop-and-wait stream"),
# RTO_MIN (e.g. 20ms), THIN=1. Addresses: documentation ranges, inside the namespaces only.
set -uo pipefail
cd "$(dirname "$0")/.."
tw=$(realpath "${TWINWALL:-target/debug/twinwall}")
outage=${1:-330}; runs=${2:-5}
p=lg$$
c=${p}c; r=${p}r; s=${p}s
cleanup() {
  for n in $c $s; do ip netns pids $n 2>/dev/null | xargs -r kill 2>/dev/null; done
  for n in $c $r $s; do ip netns del $n 2>/dev/null; done
}
trap cleanup EXIT
for n in $c $r $s; do ip netns add $n; ip -n $n link set lo up; done
ip link add ${p}a netns $c type veth peer name ${p}b netns $r
ip link add ${p}d netns $r type veth peer name ${p}e netns $s
ip -n $c addr add 192.0.2.10/24 dev ${p}a; ip -n $c link set ${p}a up
ip -n $c route add default via 192.0.2.1 ${RTO_MIN:+rto_min $RTO_MIN}
ip -n $r addr add 192.0.2.1/24 dev ${p}b; ip -n $r link set ${p}b up
ip -n $r addr add 203.0.113.1/24 dev ${p}d; ip -n $r link set ${p}d up
ip -n $s addr add 203.0.113.254/24 dev ${p}e; ip -n $s link set ${p}e up
ip -n $s route add default via 203.0.113.1 ${RTO_MIN:+rto_min $RTO_MIN}
ip netns exec $r sysctl -qw net.ipv4.ip_forward=1
if [ "${THIN:-}" = 1 ]; then
  for n in $c $s; do ip netns exec $n sysctl -qw net.ipv4.tcp_thin_linear_timeouts=1; done
fi
ip netns exec $r nft add table inet lab_gap
ip netns exec $r nft add chain inet lab_gap forward_drop '{ type filter hook forward priority 0; }'
ip netns exec $s "$tw" lab agent server --listen 0.0.0.0:7000 >/dev/null 2>&1 &
sleep 0.3
stats() { ip netns exec $c bash -c "exec 3<>/dev/tcp/127.0.0.1/7001; echo $1 >&3; cat <&3"; }
for mode in ${MODES:-stop-and-wait stream}; do
  flag=""; [ "$mode" = stream ] && flag=--stream
  ip netns exec $c "$tw" lab agent client --target 203.0.113.254:7000 --flows 8 \
    --interval-ms 20 --stats 127.0.0.1:7001 $flag >/dev/null 2>&1 &
  agent=$!
  sleep 2
  for i in $(seq 1 "$runs"); do
    stats reset >/dev/null
    sleep 1.$((RANDOM % 10))
    ip netns exec $r nft add rule inet lab_gap forward_drop drop
    sleep "$(printf '%d.%03d' $((outage / 1000)) $((outage % 1000)))"
    ip netns exec $r nft flush chain inet lab_gap forward_drop
    sleep 2.5
    stats stats | python3 -c '
import json, sys
d = json.load(sys.stdin)
tcp = sorted(f["longest_gap_ms"] for f in d["flows"] if f["proto"] == "tcp")
udp = max(f["longest_gap_ms"] for f in d["flows"] if f["proto"] == "udp")
broken = sum(1 for f in d["flows"] if f["resets"] + f["stalls"] > 0)
print(f"'"$mode"' outage '"$outage"' ms: TCP longest {tcp[-1]} ms (median {tcp[len(tcp)//2]}), UDP {udp} ms, broken {broken}")'
  done
  kill $agent 2>/dev/null; wait $agent 2>/dev/null
done
echo "(rto_min ${RTO_MIN:-default}, thin linear timeouts ${THIN:-0}; load $(cut -d' ' -f1-3 /proc/loadavg))"
