//! splitvisor-net under our own vmm, inside the nested-KVM sandbox. Every address lives in
//! network namespaces the job makes inside L1. A guest with two queue pairs and two vCPUs sees
//! the MAC and MTU given on the backend's command line, pings the namespace and runs iperf3
//! both ways; after `ethtool -L eth0 combined 2` both pairs' counters move, and it can go
//! down to one pair and back (each a control command it waits for). Two guests whose
//! backends put their taps on one bridge reach each other. `scripts/hostnet.sh nat-up` (run
//! twice: idempotent) gives a guest a DHCP address from dnsmasq and a gateway it can ping, and
//! `nat-down` leaves no bridge, nftables table or dnsmasq behind.

use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::guest::{self, GUEST_SH};
use integration_tests::{shared_job, JobOutput, Sandbox};

/// One guest, two pairs: link facts, pairs, ping, iperf3 out (4 streams) and in (4 streams);
/// then [`guest::NET_TRAFFIC_ON_BOTH_PAIRS`] and [`GUEST_PAIRS_DOWN_AND_UP`].
const GUEST: &str = r#"
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
echo "GUEST-LINK $(cat /sys/class/net/eth0/address) $(cat /sys/class/net/eth0/mtu)"
ethtool -L eth0 combined 2
echo "GUEST-PAIRS $(ethtool -l eth0 | grep Combined | tail -n1 | awk '{print $2}')"
ping -c 3 -W 5 10.0.2.1 > /tmp/ping.out 2>&1
echo "GUEST-PING $?"
iperf3 -c 10.0.2.1 -t 3 -P 4 -f m > /tmp/out.txt 2>&1
echo "GUEST-IPERF-OUT $? $(grep SUM /tmp/out.txt | grep receiver | awk '{print $6}')"
iperf3 -c 10.0.2.1 -t 3 -P 4 -R -f m > /tmp/in.txt 2>&1
echo "GUEST-IPERF-IN $? $(grep SUM /tmp/in.txt | grep receiver | awk '{print $6}')"
"#;

/// After the traffic: back to one pair and up to two again, each a control command the guest
/// waits for.
const GUEST_PAIRS_DOWN_AND_UP: &str = r#"
ethtool -L eth0 combined 1
echo "GUEST-PAIRS-ONE $(ethtool -l eth0 | grep Combined | tail -n1 | awk '{print $2}')"
ethtool -L eth0 combined 2
ping -c 2 -W 5 10.0.2.1 > /dev/null 2>&1
echo "GUEST-PAIRS-BACK $? $(ethtool -l eth0 | grep Combined | tail -n1 | awk '{print $2}')"
"#;

/// On the NAT network: an address by DHCP, then the gateway.
const DHCP: &str = r#"
ip link set eth0 up
printf '#!/bin/sh\n[ "$1" = bound ] && ip addr add $ip/$mask dev $interface && echo "$ip via $router" > /tmp/lease\n' > /tmp/dhcp.sh
chmod +x /tmp/dhcp.sh
udhcpc -i eth0 -n -q -t 10 -s /tmp/dhcp.sh > /dev/null 2>&1
echo "GUEST-DHCP $(cat /tmp/lease)"
ping -c 3 -W 5 $(cut -d' ' -f3 /tmp/lease) > /dev/null 2>&1
echo "GUEST-GATEWAY-PING $?"
"#;

/// Two guests on one bridge: each pings the other until it answers (bounded), then stays up
/// long enough for the other to finish.
const PEER: &str = r#"
ip link set eth0 up
ip addr add $(cat /proc/cmdline | tr ' ' '\n' | grep '^sv.ip=' | cut -d= -f2)/24 dev eth0
peer=$(cat /proc/cmdline | tr ' ' '\n' | grep '^sv.peer=' | cut -d= -f2)
i=0
until ping -c 1 -W 1 $peer > /dev/null 2>&1; do
    i=$((i + 1)); [ $i -ge 90 ] && break; sleep 1
done
ping -c 3 -W 2 $peer > /tmp/ping.out 2>&1
echo "GUEST-PEER-PING $?"
sleep 8
"#;

const JOB: &str = r#"
# busybox sh runs its own applets before PATH: the host's iproute2 by its path
IP=/job/hostbin/ip
W=/tmp/w
mkdir -p $W
$IP netns add ns1
$IP -n ns1 link set lo up
$IP netns exec ns1 splitvisor-net --socket $W/n1.sock --create-tap tap1 --queues 2 \
    --mac 52:54:00:00:00:11 --mtu 1400 --pidfile $W/n1.pid 2>"$JOB/n1-net.err" &
N1=$!
wait_for . $W/n1.pid 30 || echo "NO-PIDFILE n1" >> "$JOB/l1.txt"
$IP -n ns1 addr add 10.0.2.1/24 dev tap1
$IP netns exec ns1 iperf3 -s > "$JOB/iperf-s.log" 2>&1 &
SRV=$!
$IP netns exec ns1 iperf3 -s -p 5202 > /dev/null 2>&1 &
SRV2=$!
boot_case pairs 400 --kernel $L2_KERNEL --initramfs $KIT/l2/initramfs.cpio.gz --cpus 2 \
    --memory 512M --cmdline "console=ttyS0 quiet sv.cmd64=$GUEST64" \
    --device vhost-user,type=net,socket=$W/n1.sock,queues=2
# every thread's scheduling policy (field 41 of its stat; 3 = SCHED_BATCH, the default)
sched() { echo "SCHED-$1 $(cat /proc/$(cat $W/$1.pid)/task/*/stat | awk '{print $41}' | sort -u | tr '\n' ' ')" >> "$JOB/l1.txt"; }
sched n1
kill -USR1 $N1; sleep 1
kill -TERM $N1; wait $N1
echo "NET-EXIT $?" >> "$JOB/l1.txt"
kill $SRV $SRV2; wait $SRV $SRV2

# two guests, two backends, one bridge in its own namespace
$IP netns add ns2
$IP -n ns2 link add br0 type bridge
$IP -n ns2 link set br0 up
# (b under the normal scheduling policy)
for v in a b; do
    policy=batch; [ $v = b ] && policy=other
    $IP netns exec ns2 splitvisor-net --socket $W/$v.sock --create-tap tap-$v --bridge br0 \
        --sched $policy --pidfile $W/$v.pid 2>"$JOB/$v-net.err" &
    eval NET_$v=$!
    wait_for . $W/$v.pid 30 || echo "NO-PIDFILE $v" >> "$JOB/l1.txt"
    sched $v
done
peer() { # peer NAME IP PEER-IP
    boot_case $1 400 --kernel $L2_KERNEL --initramfs $KIT/l2/initramfs-min.cpio.gz \
        --memory 256M --cmdline "console=ttyS0 quiet sv.ip=$2 sv.peer=$3 sv.cmd64=$PEER64" \
        --device vhost-user,type=net,socket=$W/$1.sock
}
peer a 10.0.3.1 10.0.3.2 &
PA=$!
peer b 10.0.3.2 10.0.3.1 &
PB=$!
wait $PA $PB
kill -TERM $NET_a $NET_b; wait $NET_a $NET_b

# libvirt-style NAT network from scripts/hostnet.sh, in a third namespace (dnsmasq drops
# privileges to nobody: L1's initramfs has no user database of its own)
printf 'root:x:0:0::/:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n' > /etc/passwd
printf 'root:x:0:\nnogroup:x:65534:\ndip:x:30:\n' > /etc/group
printf '%s' "$HOSTNET64" | base64 -d > $W/hostnet.sh
$IP netns add ns3
$IP -n ns3 link set lo up
$IP netns exec ns3 bash $W/hostnet.sh nat-up t3 --subnet 10.0.4.0/24 >> "$JOB/hostnet.txt" 2>&1
$IP netns exec ns3 bash $W/hostnet.sh nat-up t3 --subnet 10.0.4.0/24 >> "$JOB/hostnet.txt" 2>&1
echo "NAT-UP $?" >> "$JOB/l1.txt"
$IP netns exec ns3 splitvisor-net --socket $W/c.sock --create-tap tap-c --bridge sv-t3 \
    --pidfile $W/c.pid 2>"$JOB/c-net.err" &
NET_c=$!
wait_for . $W/c.pid 30 || echo "NO-PIDFILE c" >> "$JOB/l1.txt"
boot_case dhcp 400 --kernel $L2_KERNEL --initramfs $KIT/l2/initramfs-min.cpio.gz --memory 256M \
    --cmdline "console=ttyS0 quiet sv.cmd64=$DHCP64" --device vhost-user,type=net,socket=$W/c.sock
kill -TERM $NET_c; wait $NET_c
$IP netns exec ns3 bash $W/hostnet.sh nat-down t3 >> "$JOB/hostnet.txt" 2>&1
$IP netns exec ns3 bash $W/hostnet.sh status > "$JOB/hostnet-after.txt" 2>&1
$IP netns del ns1
$IP netns del ns2
$IP netns del ns3
echo "NETNS-LEFT $($IP netns list | wc -l)" >> "$JOB/l1.txt"
"#;

fn job() -> &'static JobOutput {
    static OUT: OnceLock<Result<JobOutput, String>> = OnceLock::new();
    shared_job(&OUT, || {
        Sandbox::new()?
            .timeout(Duration::from_secs(600))
            .host_tool("ip")
            .host_tool("iperf3")
            .host_tool("bash")
            .host_tool("nft")
            .host_tool("dnsmasq")
            .host_tool("sysctl")
            .run(&format!(
                "{GUEST_SH}\nGUEST64={}\nPEER64={}\nDHCP64={}\nHOSTNET64={}\n{JOB}",
                guest::base64(
                    format!(
                        "{GUEST}{}{GUEST_PAIRS_DOWN_AND_UP}",
                        guest::NET_TRAFFIC_ON_BOTH_PAIRS
                    )
                    .as_bytes()
                ),
                guest::base64(PEER.as_bytes()),
                guest::base64(DHCP.as_bytes()),
                guest::base64(include_str!("../../scripts/hostnet.sh").as_bytes())
            ))
    })
}

fn log(case: &str) -> String {
    job().file(&format!("{case}.log")).unwrap_or_default()
}

/// The backend's counter `key` for `pair` (from its SIGUSR1 and exit lines).
fn pair_counter(pair: usize, key: &str) -> u64 {
    guest::net_pair_counter(&job().file("n1-net.err").unwrap_or_default(), pair, key)
}

#[test]
fn the_guest_sees_the_mac_and_mtu_of_the_command_line() {
    let log = log("pairs");
    assert!(guest::ready(&log).is_some(), "guest did not boot:\n{log}");
    assert_eq!(
        guest::value(&log, "GUEST-LINK"),
        Some("52:54:00:00:00:11 1400"),
        "{log}"
    );
}

#[test]
fn guest_and_namespace_ping_and_run_iperf3_both_ways() {
    let log = log("pairs");
    assert_eq!(guest::value(&log, "GUEST-PING"), Some("0"), "{log}");
    // what iperf3 says it moved in its 3 s (its receiver's rate) went through the backend's
    // pairs: guest to namespace is the guest's transmit side, the other way its receive side
    for (key, counter) in [
        ("GUEST-IPERF-OUT", "tx_bytes"),
        ("GUEST-IPERF-IN", "rx_bytes"),
    ] {
        let (rc, rate) = guest::iperf(&log, key);
        assert_eq!(rc, "0", "{key}: {log}");
        let moved = (rate * 1e6 / 8.0 * 3.0) as u64;
        let counted: u64 = [0, 1].map(|pair| pair_counter(pair, counter)).iter().sum();
        assert!(
            moved > 0 && counted >= moved / 10 * 9,
            "{key}: iperf3 moved {moved} bytes ({rate} Mbit/s), the backend's {counter} \
             count {counted}\n{log}"
        );
    }
    assert_eq!(
        job().file("pairs.rc").unwrap_or_default().trim(),
        "0",
        "{log}"
    );
}

#[test]
fn with_two_pairs_enabled_both_carry_traffic() {
    let log = log("pairs");
    assert_eq!(guest::value(&log, "GUEST-PAIRS"), Some("2"), "{log}");
    for pair in [0, 1] {
        for key in ["rx_packets", "tx_packets"] {
            assert!(
                pair_counter(pair, key) > 100,
                "pair {pair} {key}:\n{}",
                job().file("n1-net.err").unwrap_or_default()
            );
        }
    }
}

/// Every VQ_PAIRS_SET is answered, not just the first: the driver spins until it is, so a
/// lost control-queue kick hangs the guest (it did, with EVENT_IDX, before the control queue
/// re-armed its kick).
#[test]
fn the_guest_goes_down_to_one_pair_and_back() {
    let log = log("pairs");
    assert_eq!(guest::value(&log, "GUEST-PAIRS-ONE"), Some("1"), "{log}");
    assert_eq!(guest::value(&log, "GUEST-PAIRS-BACK"), Some("0 2"), "{log}");
    // (the probe's own VQ_PAIRS_SET, then one down and one up)
    let err = job().file("n1-net.err").unwrap_or_default();
    let commands = guest::net_counter(&err, "ctrl_commands");
    assert!(commands >= 3, "ctrl_commands {commands}:\n{err}");
}

#[test]
fn two_guests_on_one_bridge_reach_each_other() {
    for vm in ["a", "b"] {
        let log = log(vm);
        assert_eq!(
            guest::value(&log, "GUEST-PEER-PING"),
            Some("0"),
            "{vm}:\n{log}"
        );
    }
}

/// Every thread of the backend runs under the policy of `--sched` (batch by default).
#[test]
fn backend_threads_run_under_the_scheduling_policy_asked_for() {
    let l1 = job().file("l1.txt").unwrap_or_default();
    for (backend, policy) in [("n1", "3"), ("a", "3"), ("b", "0")] {
        let key = format!("SCHED-{backend} ");
        let line = l1.lines().find(|l| l.starts_with(&key));
        assert_eq!(
            line.map(|l| l[key.len()..].trim()),
            Some(policy),
            "{backend}:\n{l1}"
        );
    }
}

#[test]
fn backends_exit_cleanly_and_no_namespace_is_left() {
    let l1 = job().file("l1.txt").unwrap_or_default();
    assert!(l1.contains("NET-EXIT 0"), "{l1}");
    assert!(l1.contains("NETNS-LEFT 0"), "{l1}");
    assert!(!l1.contains("NO-PIDFILE"), "{l1}");
}

#[test]
fn hostnet_nat_gives_a_guest_dhcp_and_a_gateway_and_tears_down_cleanly() {
    let log = log("dhcp");
    let l1 = job().file("l1.txt").unwrap_or_default();
    let hostnet = job().file("hostnet.txt").unwrap_or_default();
    assert!(l1.contains("NAT-UP 0"), "{l1}\n{hostnet}");
    let lease = guest::value(&log, "GUEST-DHCP").unwrap_or_default();
    assert!(
        lease.starts_with("10.0.4.") && lease.ends_with("via 10.0.4.1"),
        "lease {lease:?}:\n{log}"
    );
    assert_eq!(guest::value(&log, "GUEST-GATEWAY-PING"), Some("0"), "{log}");
    let after = job().file("hostnet-after.txt").unwrap_or_default();
    assert!(
        !after.contains("sv-t3") && !after.contains("splitvisor-t3"),
        "{after}"
    );
    assert!(!after.contains("dnsmasq.pid"), "{after}");
}
