IP=/job/hostbin/ip
$IP netns add svlife
$IP -n svlife link set lo up
$IP -n svlife link add svbr0 type bridge
$IP -n svlife link set svbr0 up
$IP -n svlife addr add 10.0.3.1/24 dev svbr0
cat > /tmp/life.sh <<'LIFE'
set -u
export SVCTL_STORE=/tmp/store SVCTL_RUNTIME=/tmp/run
W=/tmp/w
mkdir -p $W
S=$JOB/steps.txt
step() { echo "== $*" >> $S; }
l1_up() { cut -d' ' -f1 /proc/uptime; }
# every svctl call: its output and exit status in the steps file
sv() { svctl "$@" >> $S 2>&1; echo "rc=$? ($*)" >> $S; }
n=0
con() { # con SECONDS 'typed line' MARKER: one console session, until MARKER is in its output
    n=$((n + 1))
    f=$JOB/con$n.txt
    (
        sleep 0.5
        printf '%s\n' "$2"
        i=0
        while ! grep -q "$3" $f 2>/dev/null && [ $i -lt $(($1 * 10)) ]; do sleep 0.1; i=$((i + 1)); done
    ) | svctl console vm1 > $f 2>&1
}
live() { # live processes of ours (zombies left to a non-reaping init do not count)
    for f in /proc/[0-9]*/stat; do
        read -r l < $f 2>/dev/null || continue
        case "$l" in
            *"(splitvisor"*|*"(svctl)"*)
                st=$(echo "$l" | sed 's/.*) //' | cut -d' ' -f1)
                [ "$st" = Z ] || echo "$l" | cut -d' ' -f1-2
                ;;
        esac
    done
}
qemu-img create -f qcow2 $W/disk.qcow2 64M > /dev/null

step install
sv install --name vm1 --memory 512M --vcpus 2 --disk path=$W/disk.qcow2,format=qcow2 \
    --network bridge=svbr0 --kernel $L2_KERNEL --initramfs $KIT/l2/initramfs-min.cpio.gz \
    --cmdline "console=ttyS0 quiet"
step list-after-install
sv list
step install-again
sv install --name vm1 --kernel $L2_KERNEL
# the init marker, from the console's history
i=0
while [ $i -lt 120 ]; do
    svctl console vm1 < /dev/null > $JOB/con-boot.txt 2>&1
    grep -q SPLITVISOR-GUEST-READY $JOB/con-boot.txt && break
    sleep 1; i=$((i + 1))
done
con 30 'echo TYPED-$((6 * 7))' TYPED-42
con 30 '(i=0; while [ $i -lt 100000 ]; do i=$((i + 1)); echo $i > /tmp/ctr.n; mv /tmp/ctr.n /tmp/ctr; sleep 0.1; done) & echo CTR-$((2 + 2))' CTR-4
con 30 'probe() { echo "PROBE-$1 $(cat /tmp/ctr) $(cut -d" " -f1 /proc/uptime)"; }; echo DEF-$((3 + 3))' DEF-6
echo "L1-PROBE-A $(l1_up)" >> $S
con 30 'probe A' 'PROBE-A '
step suspend
sv suspend vm1
step dominfo-paused
sv dominfo vm1
step list-paused
sv list
sleep 5
step shutdown-paused
sv shutdown vm1
step resume
sv resume vm1
echo "L1-PROBE-B $(l1_up)" >> $S
con 30 'probe B' 'PROBE-B '
step dominfo-running
sv dominfo vm1
con 60 'dd if=/dev/vda of=/dev/null bs=64k count=32; ip link set eth0 up; ip addr add 10.0.3.15/24 dev eth0; ping -c 3 10.0.3.1; echo IO-$((1 + 1))-DONE' IO-2-DONE
# every thread of every process of the running domain: its seccomp mode, user, capabilities
step confinement
for p in $(live | cut -d' ' -f1); do
    role=$(tr '\0' ' ' < /proc/$p/cmdline | cut -d' ' -f1-2)
    case "$role" in
        *splitvisor-net*) echo "NETCMD $(tr '\0' ' ' < /proc/$p/cmdline)TUNFDS $(ls -l /proc/$p/fd | grep -c /dev/net/tun)" ;;
    esac
    for t in /proc/$p/task/*; do
        echo "CONF $p [$role] $(cat $t/comm 2>/dev/null) $(grep -E '^(Uid|Seccomp|Seccomp_filters|CapEff):' $t/status 2>/dev/null | tr -s '\t ' ' ' | tr '\n' ' ')"
    done
done >> $S
# on a terminal (script(1) gives it a pty): raw input, Ctrl-] detaches, the domain runs on
step console-tty
(
    sleep 1
    printf 'echo TTY-$((7 * 6))\r'
    i=0
    while ! grep -q TTY-42 $JOB/con-tty.txt 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    printf '\035'
) | script -qec "svctl console vm1" /dev/null > $JOB/con-tty.txt 2>&1
echo "rc=$? (console on a tty)" >> $S
step list-after-detach
sv list
step domblkstat
sv domblkstat vm1
step domblkstat-nodisk
sv domblkstat vm1 vdz
step domifstat
sv domifstat vm1
step domblklist
sv domblklist vm1
step domiflist
sv domiflist vm1
step setmem
sv setmem vm1 256M
step setmem-above-max
sv setmem vm1 2G
# the balloon inflates: dominfo's used memory follows (bounded)
i=0
while [ $i -lt 60 ]; do
    used=$(svctl --json dominfo vm1 | sed -n 's/.*"used_memory_kib": \([0-9]*\).*/\1/p')
    [ "${used:-999999}" -le $((300 * 1024)) ] && break
    sleep 1; i=$((i + 1))
done
step dominfo-ballooned
sv dominfo vm1
step dommemstat
sv dommemstat vm1
# the disk's backend is killed: the supervisor starts it again, the vmm reconnects, the guest
# writes on (bounded waits)
step kill-blk-backend
pid=$(sed -n 's/.*"blk0":{"down":[a-z]*,"pid":\([0-9]*\).*/\1/p' /tmp/run/vm1/backends.json)
echo "BLK0-PID ${pid:-none}" >> $S
[ -n "$pid" ] && kill -9 $pid
i=0
while [ $i -lt 150 ]; do
    svctl dominfo vm1 | grep -q 'Process blk0: *running, 1 restart' && break
    sleep 0.2; i=$((i + 1))
done
con 60 'dd if=/dev/zero of=/dev/vda bs=4k count=64 seek=1024 conv=fsync && echo IO-AFTER-RESTART-$((2 + 3))' IO-AFTER-RESTART-5
step dominfo-after-restart
sv dominfo vm1
# the disk's backend stopped (SIGSTOP): its I/O waits, but the console and the API answer;
# after SIGCONT the disk carries on
step stop-blk-backend
pid=$(sed -n 's/.*"blk0":{"down":[a-z]*,"pid":\([0-9]*\).*/\1/p' /tmp/run/vm1/backends.json)
echo "BLK0-PID ${pid:-none}" >> $S
[ -n "$pid" ] && kill -STOP $pid
con 60 '(dd if=/dev/zero of=/dev/vda bs=4k count=16 seek=2048 conv=fsync; echo STOPPED-WRITE-$? > /tmp/stopped-write) & echo STOPPED-CONSOLE-$((4 + 4))' STOPPED-CONSOLE-8
t0=$(l1_up)
svctl dominfo vm1 > /dev/null 2>&1
echo "DOMINFO-SECS-STOPPED $(l1_up) $t0" >> $S
sleep 3
[ -n "$pid" ] && kill -CONT $pid
con 60 'i=0; while [ ! -s /tmp/stopped-write ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done; cat /tmp/stopped-write; echo AFTER-CONT-$((5 + 5))' AFTER-CONT-10
# the supervisor is SIGKILLed: the vmm and the backends run on (no parent-death signal, each in
# a session of its own), svctl answers from the record, and `svctl start` adopts the domain
state_of() { sed 's/.*) //' /proc/$1/stat 2>/dev/null | cut -d' ' -f1; }
blk0_pid() { sed -n 's/.*"blk0":{"down":[a-z]*,"pid":\([0-9]*\).*/\1/p' /tmp/run/vm1/backends.json; }
step kill-supervisor
spid=$(cat /tmp/run/vm1/supervisor.pid 2>/dev/null)
vpid=$(cat /tmp/run/vm1/vmm.pid 2>/dev/null)
bpid=$(blk0_pid)
echo "SUPERVISOR-PID ${spid:-none}" >> $S
echo "VMM-PID ${vpid:-none}" >> $S
[ -n "$spid" ] && kill -9 $spid
sleep 2
echo "AFTER-KILL supervisor=$(state_of $spid) vmm=$(state_of $vpid) blk0=$(state_of $bpid)" >> $S
step list-unsupervised
sv list
step dominfo-unsupervised
sv dominfo vm1
con 30 'echo UNSUPERVISED-$((8 * 8))' UNSUPERVISED-64
step backend-restart-unsupervised
sv backend-restart vm1 blk0
step start-adopts
sv start vm1
step dominfo-adopted
sv dominfo vm1
# a backend killed now is started again by the new supervisor (which did not start it)
step kill-blk-backend-adopted
pid=$(blk0_pid)
echo "BLK0-PID ${pid:-none}" >> $S
[ -n "$pid" ] && kill -9 $pid
i=0
while [ $i -lt 150 ]; do
    svctl dominfo vm1 | grep -q 'Process blk0: *running, 2 restart' && break
    sleep 0.2; i=$((i + 1))
done
con 60 'dd if=/dev/zero of=/dev/vda bs=4k count=64 seek=3072 conv=fsync && echo IO-AFTER-ADOPTED-RESTART-$((3 + 4))' IO-AFTER-ADOPTED-RESTART-7
step dominfo-after-adopted-restart
sv dominfo vm1
# a planned restart while the guest writes a pattern over and over: no failed write, no I/O
# error, the pattern reads back
con 60 'dd if=/dev/urandom of=/tmp/pat bs=4k count=1024 2>/dev/null; rm -f /tmp/brstop /tmp/brn /tmp/brfail; (n=0; while [ ! -e /tmp/brstop ]; do dd if=/tmp/pat of=/dev/vda bs=4k seek=4096 conv=fsync 2>/dev/null || echo FAIL >> /tmp/brfail; n=$((n + 1)); done; echo $n > /tmp/brn) & echo BR-START-$((5 * 5))' BR-START-25
sleep 1
step backend-restart
sv backend-restart vm1 blk0
step backend-restart-json
sv --json backend-restart vm1 vda
sleep 1
con 120 'touch /tmp/brstop; i=0; while [ ! -s /tmp/brn ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i + 1)); done; echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda of=/tmp/back bs=4k skip=4096 count=1024 2>/dev/null; echo "BR-RESULT $(cat /tmp/brn) $(cat /tmp/brfail 2>/dev/null | wc -l) $(dmesg | grep -ci "i/o error") $(md5sum < /tmp/pat | cut -d" " -f1) $(md5sum < /tmp/back | cut -d" " -f1)"; echo BR-DONE-$((6 * 6))' BR-DONE-36
step dominfo-after-backend-restart
sv dominfo vm1
step backend-restart-nodev
sv backend-restart vm1 vdz
# save (ballooned to 256M) and restore: the guest goes on where it was, its balloon held
step save
con 30 'echo SAVED-$((5 * 5)) > /tmp/savedmark; echo "MARK-CTR-$((1 + 1)) $(cat /tmp/ctr)"; echo MARK-$((4 * 4))' MARK-16
sv save vm1 $W/saved
echo "L1-SAVED-KIB $(du -sk $W/saved | cut -f1)" >> $S
step list-after-save
sv list --all
step restore
sv restore $W/saved
con 60 'c=$(cat /tmp/ctr); sleep 2; echo "RESTORED-$((2 + 3)) $(cat /tmp/savedmark) $c $(cat /tmp/ctr)"; echo RESTORE-$((8 * 8))' RESTORE-64
step dominfo-restored
sv dominfo vm1
step restore-not-saved
sv restore $W
# a snapshot of the running domain (qcow2 internal + memory), more writes, revert
con 60 'printf SNAP-DISK-A | dd of=/dev/vda bs=512 seek=20480 conv=fsync 2>/dev/null; echo MEM-A > /tmp/snapmark; echo SNAPA-$((3 * 3))' SNAPA-9
step snapshot-create
sv snapshot-create-as vm1 s1
con 60 'printf SNAP-DISK-B | dd of=/dev/vda bs=512 seek=20480 conv=fsync 2>/dev/null; echo MEM-B > /tmp/snapmark; echo SNAPB-$((4 * 5))' SNAPB-20
step snapshot-list
sv snapshot-list vm1
step snapshot-revert
sv snapshot-revert vm1 s1
con 60 'echo 3 > /proc/sys/vm/drop_caches; c=$(cat /tmp/ctr); sleep 2; echo "REVERTED-$((3 + 4)) $(cat /tmp/snapmark) $(dd if=/dev/vda bs=512 skip=20480 count=1 2>/dev/null | head -c 11) $c $(cat /tmp/ctr)"; echo REVERT-$((9 * 9))' REVERT-81
# an external snapshot of the running domain: its disk goes on in an overlay
step snapshot-external
sv snapshot-create-as vm1 ext1 --disk-only
con 60 'printf SNAP-DISK-E | dd of=/dev/vda bs=512 seek=20480 conv=fsync 2>/dev/null; echo 3 > /proc/sys/vm/drop_caches; echo "EXTREAD-$((5 + 6)) $(dd if=/dev/vda bs=512 skip=20480 count=1 2>/dev/null | head -c 11)"; echo EXTW-$((6 * 7 + 1))' EXTW-43
step shutdown
t0=$(l1_up)
sv shutdown vm1 --timeout 120
echo "L1-SHUTDOWN-SECS $(l1_up) $t0" >> $S
step list-after-shutdown
sv list --all
step live-after-shutdown
live >> $S
step console-stopped
sv console vm1
step start
sv start vm1
step start-twice
sv start vm1
cat > $W/vm2.json <<EOF
{"name": "vm2", "memory": "256M", "kernel": "$L2_KERNEL",
 "initramfs": "$KIT/l2/initramfs-min.cpio.gz", "cmdline": "console=ttyS0 quiet",
 "disks": [{"path": "$W/vm2.raw", "format": "raw"}]}
EOF
truncate -s 16M $W/vm2.raw
step create-vm2
sv create $W/vm2.json
step list-two
sv list
step vmm-count
live | grep -c '(splitvisor)' >> $S
# vm2 reboots (ACPI: its power-off becomes a new boot) and is reset (at once): the same
# vmm boots it again each time
boots() { # boots N: vm2's console history shows N boots (bounded wait)
    i=0
    while [ $i -lt 120 ]; do
        svctl console vm2 < /dev/null > $JOB/con-vm2.txt 2>&1
        [ "$(grep -c SPLITVISOR-GUEST-READY $JOB/con-vm2.txt)" -ge $1 ] && return 0
        sleep 1; i=$((i + 1))
    done
    return 1
}
step reboot-vm2
boots 1 || echo "NO-BOOT-VM2" >> $S
v2=$(cat /tmp/run/vm2/vmm.pid 2>/dev/null)
sv reboot vm2
boots 2 || echo "NO-REBOOT-VM2" >> $S
step reset-vm2
sv reset vm2
boots 3 || echo "NO-RESET-VM2" >> $S
echo "VM2-BOOTS $(grep -c SPLITVISOR-GUEST-READY $JOB/con-vm2.txt) VMM ${v2:-none} $(cat /tmp/run/vm2/vmm.pid 2>/dev/null)" >> $S
step destroy-vm1
sv destroy vm1
# the running domain's snapshot, as qemu-img sees it; then deleted with the domain stopped
step qemu-img-snapshot-list
qemu-img snapshot -l $W/disk.qcow2 >> $S 2>&1; echo "rc=$? (qemu-img)" >> $S
step qemu-img-check
qemu-img check $W/disk.qcow2 >> $S 2>&1; echo "rc=$? (qemu-img)" >> $S
step snapshot-delete
sv snapshot-delete vm1 s1
step snapshot-list-after-delete
sv --json snapshot-list vm1
# the external snapshot: the overlay reads through to the image, which kept its sector
OVL=/tmp/store/overlays/vm1/vda-disk.ext1.qcow2
step qemu-img-overlay
qemu-img info $OVL >> $S 2>&1; echo "rc=$? (qemu-img)" >> $S
qemu-img check $OVL >> $S 2>&1; echo "rc=$? (qemu-img)" >> $S
qemu-img convert -O raw $OVL $W/ovl.raw && echo "OVERLAY-SECTOR $(dd if=$W/ovl.raw bs=512 skip=20480 count=1 2>/dev/null | head -c 11)" >> $S
qemu-img convert -O raw $W/disk.qcow2 $W/base.raw && echo "BASE-SECTOR $(dd if=$W/base.raw bs=512 skip=20480 count=1 2>/dev/null | head -c 11)" >> $S
rm -f $W/ovl.raw $W/base.raw
# vm2's supervisor is SIGKILLed: destroy works from the record alone (it stops the vmm, then
# the backends, and removes the runtime dir; checked by the steps at the end)
step kill-supervisor-vm2
s2=$(cat /tmp/run/vm2/supervisor.pid 2>/dev/null)
echo "SUPERVISOR2-PID ${s2:-none}" >> $S
[ -n "$s2" ] && kill -9 $s2
sleep 1
step dominfo-vm2-unsupervised
sv dominfo vm2
step destroy-vm2
sv destroy vm2
step list-after-destroy
sv list --all
step undefine
sv undefine vm1
step list-empty
sv list --all
step live-end
live >> $S
step runtime-end
ls -A /tmp/run >> $S
step end
LIFE
KIT=$KIT JOB=$JOB L2_KERNEL=$L2_KERNEL $IP netns exec svlife sh /tmp/life.sh
$IP netns del svlife
