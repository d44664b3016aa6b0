#!/usr/bin/env bash
# Host networking for splitvisor VMs (run as root; every command is idempotent).
#
#   hostnet.sh bridge-up BR [ADDR/PREFIX]   a Linux bridge, up, optionally with an address
#   hostnet.sh bridge-down BR
#   hostnet.sh tap-up TAP [--queues N] [--bridge BR]
#                                          a persistent tap with a virtio-net header and N
#                                          queues, for `splitvisor-net --tap TAP`
#   hostnet.sh tap-down TAP
#   hostnet.sh nat-up NAME [--subnet 192.168.122.0/24]
#                                          libvirt's "default network": bridge sv-NAME with the
#                                          subnet's first address, IPv4 forwarding, nftables
#                                          masquerade for the subnet (table ip splitvisor-NAME),
#                                          dnsmasq serving DHCP and DNS on the bridge
#   hostnet.sh nat-down NAME
#   hostnet.sh status
#
# A VM joins a bridge with `splitvisor-net --create-tap TAP --bridge BR` (the backend makes the
# tap and it goes away with the backend) or with a tap from tap-up (`--tap TAP`).
# dnsmasq's pid and leases live in /run/splitvisor/NAME.*; nothing is written under /etc.
set -euo pipefail

RUN=/run/splitvisor
die() { echo "hostnet: $*" >&2; exit 1; }
have_link() { ip link show "$1" >/dev/null 2>&1; }
[ "$(id -u)" -eq 0 ] || die "run as root"

# A fixed, locally administered MAC for a bridge, from its name. Without one a bridge takes its
# lowest port's MAC, so when a VM's tap (its only port) goes away and comes back — a restarted
# net backend — the bridge's MAC changes and the guest's ARP entry for it points nowhere until
# it expires (libvirt pins its bridges' MACs for the same reason).
bridge_mac() { printf '%s' "$1" | md5sum | sed 's/^\(..\)\(..\)\(..\)\(..\)\(..\).*/02:\1:\2:\3:\4:\5/'; }

bridge_up() { # BR [ADDR]
    local br=$1 addr=${2:-}
    have_link "$br" || ip link add "$br" address "$(bridge_mac "$br")" type bridge
    ip link set "$br" up
    [ -z "$addr" ] || ip addr replace "$addr" dev "$br"
}

bridge_down() { have_link "$1" && ip link del "$1" || true; }

tap_up() { # TAP [--queues N] [--bridge BR]
    local tap=$1 queues=1 br=""
    shift
    while [ $# -gt 0 ]; do
        case "$1" in
            --queues) queues=$2; shift 2 ;;
            --bridge) br=$2; shift 2 ;;
            *) die "tap-up: unknown option $1" ;;
        esac
    done
    if ! have_link "$tap"; then
        if [ "$queues" -gt 1 ]; then
            ip tuntap add dev "$tap" mode tap vnet_hdr multi_queue
        else
            ip tuntap add dev "$tap" mode tap vnet_hdr
        fi
    fi
    [ -n "$br" ] && ip link set "$tap" master "$br"
    ip link set "$tap" up
}

# the subnet's network address + 1, and its prefix
gateway() { # 192.168.122.0/24 -> 192.168.122.1/24
    local net=${1%/*} prefix=${1#*/}
    local a b c d
    IFS=. read -r a b c d <<<"$net"
    echo "$a.$b.$c.$((d + 1))/$prefix"
}

dhcp_range() { # 192.168.122.0/24 -> 192.168.122.2,192.168.122.254 (for /24)
    local net=${1%/*} a b c d
    IFS=. read -r a b c d <<<"$net"
    echo "$a.$b.$c.$((d + 2)),$a.$b.$c.$((d + 254))"
}

nat_up() { # NAME [--subnet CIDR]
    local name=$1 subnet=192.168.122.0/24
    shift
    while [ $# -gt 0 ]; do
        case "$1" in
            --subnet) subnet=$2; shift 2 ;;
            *) die "nat-up: unknown option $1" ;;
        esac
    done
    [ "${subnet#*/}" = 24 ] || die "nat-up: only /24 subnets are supported ($subnet)"
    local br="sv-$name" gw
    gw=$(gateway "$subnet")
    bridge_up "$br" "$gw"
    sysctl -qw net.ipv4.ip_forward=1
    nft -f - <<EOF
table ip splitvisor-$name
delete table ip splitvisor-$name
table ip splitvisor-$name {
    chain forward {
        type filter hook forward priority 0; policy accept;
        iifname "$br" ip saddr $subnet accept
        oifname "$br" ct state established,related accept
    }
    chain postrouting {
        type nat hook postrouting priority 100; policy accept;
        ip saddr $subnet ip daddr != $subnet masquerade
    }
}
EOF
    mkdir -p "$RUN"
    local pid="$RUN/$name.dnsmasq.pid"
    if ! { [ -f "$pid" ] && kill -0 "$(cat "$pid")" 2>/dev/null; }; then
        dnsmasq --strict-order --bind-interfaces --except-interface=lo --interface="$br" \
            --listen-address="${gw%/*}" --dhcp-range="$(dhcp_range "$subnet"),12h" \
            --dhcp-leasefile="$RUN/$name.leases" --pid-file="$pid" --conf-file=/dev/null \
            --dhcp-no-override --dhcp-authoritative
    fi
    echo "hostnet: NAT network $name: bridge $br, gateway ${gw%/*}, DHCP $(dhcp_range "$subnet")"
}

nat_down() { # NAME
    local name=$1 pid="$RUN/$1.dnsmasq.pid"
    if [ -f "$pid" ]; then
        kill "$(cat "$pid")" 2>/dev/null || true
        rm -f "$pid"
    fi
    rm -f "$RUN/$name.leases"
    nft delete table ip "splitvisor-$name" 2>/dev/null || true
    bridge_down "sv-$name"
}

status() {
    echo "bridges:"; ip -br link show type bridge || true
    echo "taps:"; ip -br link show type tun || true
    echo "nftables:"; nft list tables 2>/dev/null | grep splitvisor- || true
    echo "dnsmasq:"; ls "$RUN"/*.dnsmasq.pid 2>/dev/null || true
}

cmd=${1:-}
[ -n "$cmd" ] || die "usage: hostnet.sh bridge-up|bridge-down|tap-up|tap-down|nat-up|nat-down|status ..."
shift
case "$cmd" in
    bridge-up) bridge_up "$@" ;;
    bridge-down) bridge_down "$@" ;;
    tap-up) tap_up "$@" ;;
    tap-down) have_link "$1" && ip link del "$1" || true ;;
    nat-up) nat_up "$@" ;;
    nat-down) nat_down "$@" ;;
    status) status ;;
    *) die "unknown command $cmd" ;;
esac
