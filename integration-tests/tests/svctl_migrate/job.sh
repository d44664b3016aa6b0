# Two "hosts" A and B: network namespaces whose bridges (svbr0) are joined by a veth, each
# with an svctl store of its own; the disk image is on storage both see (/tmp/w).
IP=/job/hostbin/ip
W=/tmp/w
mkdir -p $W
S=$JOB/steps.txt
step() { echo "== $*" >> $S; }
# each bridge with a MAC of its own: a bridge without one takes its ports' lowest, which
# changes as taps come and go, and the peer's ARP entry would point at a MAC no longer there
n=0
for h in hA hB; do
    n=$((n + 1))
    $IP netns add $h
    $IP -n $h link set lo up
    $IP -n $h link add svbr0 address 02:00:00:00:0a:0$n type bridge
    $IP -n $h link set svbr0 up
done
$IP link add vA netns hA type veth peer name vB netns hB
$IP -n hA link set vA master svbr0 up
$IP -n hB link set vB master svbr0 up
$IP -n hA addr add 10.0.8.1/24 dev svbr0
$IP -n hA addr add 10.0.9.1/24 dev svbr0
$IP -n hB addr add 10.0.9.2/24 dev svbr0
on() { # on HOST svctl-args...: svctl on that host
    _h=$1
    shift
    $IP netns exec h$_h env SVCTL_STORE=/tmp/$_h/store SVCTL_RUNTIME=/tmp/$_h/run \
        KIT=$KIT svctl "$@"
}
sv() { # sv HOST svctl-args...: its output and exit status in the steps file
    _h=$1
    shift
    on $_h "$@" >> $S 2>&1
    echo "rc=$? ($_h: $*)" >> $S
}
console() { on $1 console vm1 < /dev/null > $JOB/$2 2>&1; }
wait_console() { # wait_console HOST FILE MARKER SECONDS
    _i=0
    while [ $_i -lt $4 ]; do
        console $1 $2
        grep -q "$3" $JOB/$2 && return 0
        sleep 1
        _i=$((_i + 1))
    done
    return 1
}
last_count() { grep -o 'COUNT [0-9]*' $JOB/$1 | tail -n1 | cut -d' ' -f2; }
jobinfo_during() { # jobinfo_during HOST FILE: domjobinfo once a migration job runs there
    _i=0
    while [ $_i -lt 300 ]; do
        on $1 domjobinfo vm1 > $JOB/$2 2>&1
        grep -q Unbounded $JOB/$2 && return 0
        sleep 0.1
        _i=$((_i + 1))
    done
    return 1
}
qemu-img create -q -f qcow2 $W/disk.qcow2 64M

step install
sv A install --name vm1 --memory 256M --disk path=$W/disk.qcow2,format=qcow2 \
    --network bridge=svbr0 --kernel $L2_KERNEL --initramfs $KIT/l2/initramfs.cpio.gz \
    --cmdline "console=ttyS0 quiet sv.cmd64=$GUEST64"
wait_console A con-a1.txt 'COUNT 20' 300 || echo "NO-COUNT-A" >> $S
$IP netns exec hA ping -i 0.05 -c 2400 -W 1 10.0.8.2 > $JOB/ping.txt 2>&1 &
PING=$!
sleep 2

step receive-wrong-name
sv B migrate-receive vmX --listen tcp:10.0.9.2:7202
step migrate-to-wrong-name
sv A migrate vm1 tcp:10.0.9.2:7202 --live
sleep 2
step list-b-after-refusal
sv B list --all

step receive-b
sv B migrate-receive vm1 --listen tcp:10.0.9.2:7200
# the source's console to its end (its history goes with its vmm)
(sleep 600 & echo $! > $W/sleep-a.pid; wait) | on A console vm1 > $JOB/con-a2.txt 2>&1 &
step migrate-a-b
(on A migrate vm1 tcp:10.0.9.2:7200 --live > $JOB/migrate-ab.txt 2>&1; echo "rc=$?" >> $JOB/migrate-ab.txt) &
M=$!
jobinfo_during A jobinfo-a.txt || echo "NO-JOB-A" >> $S
jobinfo_during B jobinfo-b.txt || echo "NO-JOB-B" >> $S
wait $M
cat $JOB/migrate-ab.txt >> $S
step list-a-after
sv A list --all
step dominfo-b
sv B dominfo vm1
wait_console B con-b1.txt 'COUNT' 60 || echo "NO-COUNT-B" >> $S
sleep 4
kill -INT $PING
wait $PING

step receive-a
sv A migrate-receive vm1 --listen tcp:10.0.9.1:7201
(sleep 600 & echo $! > $W/sleep-b.pid; wait) | on B console vm1 > $JOB/con-b2.txt 2>&1 &
step migrate-b-a
sv B migrate vm1 tcp:10.0.9.1:7201 --undefinesource
step list-b-after-back
sv B list --all
step dominfo-a
sv A dominfo vm1
sleep 4
wait_console A con-a3.txt 'COUNT' 60 || echo "NO-COUNT-A3" >> $S

# A -> B once more, locally: the "hosts" share a file system, so guest RAM's memfd is
# handed over (a unix socket) instead of copied
step receive-b-local
sv B migrate-receive vm1 --listen unix:$W/local.sock
(sleep 600 & echo $! > $W/sleep-a2.pid; wait) | on A console vm1 > $JOB/con-a4.txt 2>&1 &
step migrate-a-b-local
sv A migrate vm1 unix:$W/local.sock --local --live
sleep 4
wait_console B con-b3.txt 'COUNT' 60 || echo "NO-COUNT-B3" >> $S
step destroy
sv B destroy vm1
kill $(cat $W/sleep-a.pid $W/sleep-b.pid $W/sleep-a2.pid)
sleep 1
step qemu-img-check
qemu-img check $W/disk.qcow2 >> $S 2>&1
echo "rc=$? (qemu-img check)" >> $S
step leftovers
for f in /proc/[0-9]*/cmdline; do
    tr '\0' ' ' < $f 2>/dev/null | grep -E '^[^ ]*(splitvisor|svctl)' || true
done >> $S
$IP netns del hA
$IP netns del hB
