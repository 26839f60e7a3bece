#!/usr/bin/env bash
# Ruleset benchmark (run by `make bench` through scripts/bench.sh, or by hand as root).
# Generates clusters with 1k / 10k / 100k filter rules (runs of rules that the compiler
# merges into one rule over a set), 10k rules where nothing merges ("mixed", the worst
# case) and one with a 100,000-element address group, then times, in a throwaway network namespace and in the same run:
#   twinwall   `twinwall ruleset apply` end to end: parse + compile + lint + nft -f (one
#              atomic transaction)
#   tw-check   the same with --check (a separate nft -c pass first)
#   compile    `twinwall ruleset compile` alone (parse + compile + lint, no nft); the
#              phases (load+validate, view, lints, emit) follow from bench_compile
#   nft -f     a plain `nft -f` of the very script twinwall generated (the yardstick)
#   ipt        `iptables-restore` of the equivalent iptables input (one rule per
#              address for the group: iptables has no sets without ipset)
# and prints a table with the ratios twinwall / nft -f, compile / nft -f and
# twinwall / iptables-restore.
# Targets: 10k rules end to end < 0.4 s, the 100k-element group < 0.5 s.
# RULESET_BENCH_SIZES="1000 10000" limits the rule counts, RULESET_BENCH_MIXED=0 skips the
# mixed case, RULESET_BENCH_GROUP=0 skips the group case; RULESET_BENCH_RUNS sets the repeats
# (each number is the median of the runs, odd counts are best). RULESET_BENCH_BEFORE=PATH
# adds a row per case for another twinwall binary (for example a copy of main's release
# build) measured the same way in the same run: before/after in one table.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-ruleset: needs root (network namespace, nftables)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "bench-ruleset: needs GNU time (package time)" >&2; exit 1; }
command -v iptables-restore >/dev/null || scripts/deps.sh test

cargo build --quiet --locked --release --bin twinwall
cargo build --quiet --locked --release -p twinwall-ruleset --example bench_compile
BIN=$PWD/target/release/twinwall
PHASES=$PWD/target/release/examples/bench_compile
SIZES=${RULESET_BENCH_SIZES:-"1000 10000 100000"}
RUNS=${RULESET_BENCH_RUNS:-5}
BEFORE=${RULESET_BENCH_BEFORE:-}
[ -z "$BEFORE" ] || [ -x "$BEFORE" ] || { echo "bench-ruleset: RULESET_BENCH_BEFORE=$BEFORE is not an executable" >&2; exit 1; }
WORK=$(mktemp -d /tmp/tw-bench-ruleset.XXXXXX)
NS=tw-bench-$$
cleanup() { ip netns del "$NS" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
ip netns add "$NS"

gen() { # gen KIND N OUT.toml OUT.ipt
  python3 - "$@" <<'PY'
import random, sys
kind, n, out_toml, out_ipt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
head = '''[cluster]
name = "bench"
version = 1

[nodes.bench-a]
priority = 200
interfaces.outside = { device = "eth0", address = "203.0.113.2/24" }
interfaces.inside = { device = "eth1", address = "198.51.100.2/24" }
interfaces.sync = { device = "eth2", address = "192.0.2.1/30" }

[nodes.bench-b]
priority = 100
interfaces.outside = { device = "eth0", address = "203.0.113.3/24" }
interfaces.inside = { device = "eth1", address = "198.51.100.3/24" }
interfaces.sync = { device = "eth2", address = "192.0.2.2/30" }

[[vrrp.group]]
name = "edge"
track = ["outside", "inside"]

[[vrrp.group.vip]]
vrid = 51
interface = "outside"
address = "203.0.113.1/24"

[sync]
interface = "sync"

[policy]
default = "drop"
'''
t = [head]
ipt = ["*filter", ":INPUT DROP [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]",
       "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
       "-A FORWARD -m conntrack --ctstate INVALID -j DROP"]
if kind in ("rules", "mixed"):
    # n distinct (network, service) pairs: 512 /24 networks of 198.18.0.0/15 (the
    # benchmarking range) x enough single-port services; none shadows another.
    # "rules": each run of 512 rules shares its port (the compiler merges every run into
    # one rule over a set of networks); "mixed": consecutive rules differ in both the
    # network and the port (an odd service count, so the pairs stay distinct), so
    # nothing merges: one nft rule per config rule, the worst case.
    nets = min(512, n)
    svcs = (n + nets - 1) // nets
    if kind == "mixed":
        svcs |= 1
    t.append("[objects.networks]")
    for k in range(nets):
        t.append(f'n{k} = ["198.{18 + k // 256}.{k % 256}.0/24"]')
    t.append("[objects.services]")
    for j in range(svcs):
        t.append(f's{j} = ["tcp/{10000 + j}"]')
    for i in range(n):
        k, j = (i % nets, i // nets) if kind == "rules" else (i % nets, i % svcs)
        t.append(f'[[policy.rule]]\nname = "r{i}"\nfrom = "outside"\nto = "n{k}"\nservice = "s{j}"\naction = "accept"')
        ipt.append(f"-A FORWARD -i eth0 -d 198.{18 + k // 256}.{k % 256}.0/24 -p tcp --dport {10000 + j} -j ACCEPT")
else:
    rnd = random.Random(1)
    addrs = rnd.sample(range(1 << 17), n)
    t.append("[objects.networks]")
    t.append("big = [" + ", ".join(f'"198.{18 + (a >> 16)}.{(a >> 8) & 255}.{a & 255}"' for a in addrs) + "]")
    t.append('[objects.services]\nweb = ["tcp/80", "tcp/443"]')
    t.append('[[policy.rule]]\nname = "big-group"\nfrom = "outside"\nto = "big"\nservice = "web"\naction = "accept"')
    for a in addrs:
        ipt.append(f"-A FORWARD -i eth0 -d 198.{18 + (a >> 16)}.{(a >> 8) & 255}.{a & 255}/32 -p tcp -m multiport --dports 80,443 -j ACCEPT")
ipt.append("COMMIT")
open(out_toml, "w").write("\n".join(t) + "\n")
open(out_ipt, "w").write("\n".join(ipt) + "\n")
PY
}

# best CMD...: "WALL CPU" in seconds, each the median of RUNS runs: wall-clock time, and
# CPU time (user + system of the command and everything it waited for, measured by
# GNU time), which a loaded machine inflates far less than wall time. The ruleset is
# flushed before each run so every run starts from the same (empty) state.
best() {
  local w u s walls="" cpus=""
  for _ in $(seq "$RUNS"); do
    ip netns exec "$NS" nft flush ruleset
    ip netns exec "$NS" iptables-restore <<<$'*filter\nCOMMIT' 2>/dev/null || true
    /usr/bin/time -o "$WORK/time" -f '%e %U %S' "$@" >/dev/null
    read -r w u s <"$WORK/time"
    walls="$walls $w"
    cpus="$cpus $(awk -v b="$u" -v c="$s" 'BEGIN { print b + c }')"
  done
  echo "$(median $walls) $(median $cpus)"
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

row() { # row LABEL TW TN CC NF IP (each a number)
  awk -v l="$1" -v a="$2" -v n="$3" -v b="$4" -v c="$5" -v d="$6" \
    'BEGIN { printf "%-19s %8.3fs %8.3fs %8.3fs %8.3fs %8.3fs %7.2fx %7.2fx %7.2fx\n", l, a, n, b, c, d, a / c, b / c, a / d }'
}
echo "medians of $RUNS runs each${BEFORE:+; 'before' rows: $BEFORE}"
printf '%-19s %9s %9s %9s %9s %9s %8s %8s %8s\n' case twinwall tw-check compile "nft -f" ipt-rest tw/nft comp/nft tw/ipt
run_case() { # run_case LABEL KIND N
  local label=$1 kind=$2 n=$3
  gen "$kind" "$n" "$WORK/$label.toml" "$WORK/$label.ipt"
  "$BIN" ruleset compile "$WORK/$label.toml" --node bench-a >"$WORK/$label.nft" 2>"$WORK/$label.lints"
  local tw tn cc nf ip
  tw=($(best ip netns exec "$NS" "$BIN" --log warn ruleset apply "$WORK/$label.toml" --node bench-a))
  tn=($(best ip netns exec "$NS" "$BIN" --log warn ruleset apply "$WORK/$label.toml" --node bench-a --check))
  cc=($(best "$BIN" ruleset compile "$WORK/$label.toml" --node bench-a))
  nf=($(best ip netns exec "$NS" nft -f "$WORK/$label.nft"))
  ip=($(best sh -c "ip netns exec $NS iptables-restore < $WORK/$label.ipt"))
  row "$label wall" "${tw[0]}" "${tn[0]}" "${cc[0]}" "${nf[0]}" "${ip[0]}"
  row "$label cpu" "${tw[1]}" "${tn[1]}" "${cc[1]}" "${nf[1]}" "${ip[1]}"
  if [ -n "$BEFORE" ]; then
    local bw bn bc
    bw=($(best ip netns exec "$NS" "$BEFORE" --log warn ruleset apply "$WORK/$label.toml" --node bench-a))
    bn=($(best ip netns exec "$NS" "$BEFORE" --log warn ruleset apply "$WORK/$label.toml" --node bench-a --check))
    bc=($(best "$BEFORE" ruleset compile "$WORK/$label.toml" --node bench-a))
    row "  before wall" "${bw[0]}" "${bn[0]}" "${bc[0]}" "${nf[0]}" "${ip[0]}"
    row "  before cpu" "${bw[1]}" "${bn[1]}" "${bc[1]}" "${nf[1]}" "${ip[1]}"
  fi
  echo "                    compile phases (best of $RUNS): $("$PHASES" "$WORK/$label.toml" bench-a "$RUNS")"
  echo "                    load average after this case: $(cut -d' ' -f1-3 /proc/loadavg)"
}
for n in $SIZES; do
  run_case "rules-$n" rules "$n"
done
[ "${RULESET_BENCH_MIXED:-1}" = 0 ] || run_case "mixed-10000" mixed 10000
[ "${RULESET_BENCH_GROUP:-1}" = 0 ] || run_case "group-100000" group 100000
echo "targets: rules-10000 twinwall < 0.400 s; group-100000 twinwall < 0.500 s"
echo "machine: $(nproc) cores; uptime: $(uptime)"
echo "load average while measuring: $(cut -d' ' -f1-3 /proc/loadavg)"
