# A running domain (one raw boot disk, no NIC) gets a qcow2 disk and a NIC on a bridge from
# svctl, loses them and gets the disk again; then attach/detach cycles of a disk, the vmm's
# descriptors, threads and interrupts recorded after each. All inside a network namespace.
IP=/job/hostbin/ip
$IP netns add svatt
$IP -n svatt link set lo up
$IP -n svatt link add svbr1 type bridge
$IP -n svatt link set svbr1 up
$IP -n svatt addr add 10.0.4.1/24 dev svbr1
cat > /tmp/att.sh <<'ATT'
set -u
export SVCTL_STORE=/tmp/store SVCTL_RUNTIME=/tmp/run
W=/tmp/w
mkdir -p $W
S=$JOB/steps.txt
step() { echo "== $*" >> $S; }
sv() { svctl "$@" >> $S 2>&1; echo "rc=$? ($*)" >> $S; }
wait_console() { # wait_console FILE MARKER SECONDS
    _i=0
    while [ $_i -lt $3 ]; do
        svctl console vm1 < /dev/null > $JOB/$1 2>&1
        grep -q "$2" $JOB/$1 && return 0
        sleep 1
        _i=$((_i + 1))
    done
    echo "NO-$2" >> $S
    return 1
}
# backend NAME's PID in the supervisor's record
backend_pid() { sed -n "s/.*\"$1\":{\"down\":[a-z]*,\"pid\":\([0-9]*\).*/\1/p" /tmp/run/vm1/backends.json; }
gone() { if kill -0 "$1" 2>/dev/null; then echo "STILL-RUNS $1"; else echo "GONE $1"; fi; }
truncate -s 32M $W/boot.raw
truncate -s 16M $W/cycle.raw
qemu-img create -q -f qcow2 $W/data.qcow2 64M

step install
sv install --name vm1 --memory 256M --no-balloon --max-vcpus 4 --disk path=$W/boot.raw,format=raw \
    --kernel $L2_KERNEL --initramfs $KIT/l2/initramfs.cpio.gz \
    --cmdline "console=ttyS0 quiet sv.cmd64=$GUEST64"
wait_console con-up.txt GUEST-UP 300
step attach-disk
sv --json attach-disk vm1 $W/data.qcow2 vdb
step domblklist-attached
sv domblklist vm1
wait_console con-wrote.txt GUEST-WROTE 120
B1=$(backend_pid blk1)
step detach-disk
sv --json detach-disk vm1 vdb
step backend-after-detach
gone "$B1" >> $S
wait_console con-gone.txt VDB-GONE 60
step domblklist-detached
sv domblklist vm1
step attach-persistent
sv attach-disk vm1 $W/data.qcow2 vdb --persistent
step dumpconfig-persistent
sv dumpconfig vm1
wait_console con-read.txt GUEST-READ-DONE 120
step detach-persistent
sv detach-disk vm1 vdb --persistent
wait_console con-gone2.txt VDB-GONE-AGAIN 60
step dumpconfig-after
sv dumpconfig vm1
step attach-interface
sv --json attach-interface vm1 bridge svbr1 --mac 52:54:00:12:34:56
step domiflist
sv domiflist vm1
step bridge-ports
$IP -o link show master svbr1 >> $S 2>&1
wait_console con-ping.txt NIC-DONE 120
N1=$(backend_pid net0)
step detach-interface
sv detach-interface vm1 bridge
step net-backend-after-detach
gone "$N1" >> $S
wait_console con-eth-gone.txt ETH0-GONE 60
step bridge-ports-after
$IP -o link show master svbr1 >> $S 2>&1
step detach-boot
sv detach-disk vm1 vda
step detach-unknown
sv detach-disk vm1 vdz
step attach-missing
sv attach-disk vm1 $W/none.raw vdc
step attach-twice
sv attach-disk vm1 $W/boot.raw vdc
# the vCPUs: their threads, pinning (L1 has one CPU: CPU 0 is all there is), CPU time
step vcpuinfo
sv --json vcpuinfo vm1
step vcpupin-live
sv vcpupin vm1 0 0
step vcpupin-show
sv vcpupin vm1
step vcpupin-past-the-host
sv vcpupin vm1 0 3
step vcpupin-no-such-vcpu
sv vcpupin vm1 2 0
step cpu-stats
sv --json cpu-stats vm1
# vCPU hotplug through svctl (the guest leaves the new vCPUs offline: it gives them up anyway)
step setvcpus-4
sv setvcpus vm1 4 --live
step dominfo-4
sv dominfo vm1
step vcpuinfo-4
sv vcpuinfo vm1
step setvcpus-2
sv setvcpus vm1 2
step dominfo-2
sv dominfo vm1
step setvcpus-past-max
sv setvcpus vm1 5 --live
step setvcpus-back-to-1
sv setvcpus vm1 1
# cycles: the vmm's descriptors, threads, GSIs and MSI routes after each
VMM=$(cat /tmp/run/vm1/vmm.pid)
interrupts() {
    curl -sS --max-time 20 --unix-socket /tmp/run/vm1/api.sock http://localhost/api/v1/vm.info |
        sed -n 's/.*"interrupts":{"gsis":\([0-9]*\),"msi_routes":\([0-9]*\)}.*/gsis \1 routes \2/p'
}
echo "CYCLES-START $(cut -d' ' -f1 /proc/uptime)" >> $S
i=0
while [ $i -lt $CYCLES ]; do
    i=$((i + 1))
    svctl attach-disk vm1 $W/cycle.raw vdb > $JOB/cycle.txt 2>&1 ||
        { echo "CYCLE-ATTACH-FAILED $i $(cat $JOB/cycle.txt)" >> $S; break; }
    svctl detach-disk vm1 vdb > $JOB/cycle.txt 2>&1 ||
        { echo "CYCLE-DETACH-FAILED $i $(cat $JOB/cycle.txt)" >> $S; break; }
    echo "CYCLE $i fds $(ls /proc/$VMM/fd | wc -l) threads $(ls /proc/$VMM/task | wc -l) $(interrupts) backends $(ls /tmp/run/vm1/*.sock | wc -l)" >> $S
done
echo "CYCLES-END $(cut -d' ' -f1 /proc/uptime)" >> $S
step destroy
sv destroy vm1
step attach-live-shut-off
sv attach-disk vm1 $W/cycle.raw vdb --live
step attach-config-shut-off
sv --json attach-disk vm1 $W/cycle.raw vdb
step domblklist-shut-off
sv domblklist vm1
step qemu-img-check
qemu-img check $W/data.qcow2 >> $S 2>&1
echo "rc=$? (qemu-img check)" >> $S
step leftovers
for f in /proc/[0-9]*/cmdline; do
    tr '\0' ' ' < $f 2>/dev/null | grep -E '^[^ ]*(splitvisor|svctl)' || true
done >> $S
ATT
IP=$IP KIT=$KIT JOB=$JOB L2_KERNEL=$L2_KERNEL GUEST64=$GUEST64 CYCLES=$CYCLES $IP netns exec svatt sh /tmp/att.sh
$IP netns del svatt
