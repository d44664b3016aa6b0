#!/usr/bin/env bash
# bench/reconnect.sh [--kills N] [--gap-ms MS] [--qemu-reconnect-ms MS] (issue 24): how long a
# guest's disk stalls when its vhost-user-blk backend is SIGKILLed and a new one is started on
# the same socket. splitvisor + splitvisor-blk against QEMU (-accel kvm, vhost-user-blk-pci on a
# reconnecting chardev) + qemu-storage-daemon, one after the other (ours first) inside ONE
# nested-KVM sandbox run. Compare the ratio, not the milliseconds: L1 itself is emulated.
#
# Run it: bench/reconnect.sh            (10 kills per side; --kills N for more)
#
# Same on both sides: the guest kit's L2 kernel and initramfs-min, 1 vCPU, 256 MiB, one disk
# with one queue: a raw file on L1's tmpfs, which either backend serves buffered through
# io_uring (splitvisor-blk's default engine; QSD aio=io_uring, cache.direct=off: L1's 6.1 kernel
# has no O_DIRECT on tmpfs). Both backend binaries are first copied into L1's tmpfs (QSD with the
# host libraries it needs, given to it alone by LD_LIBRARY_PATH; ours uses L1's glibc), so every
# restart is the same exec from memory (not over 9p). Restart: SIGKILL,
# reap, start the same command line on the same socket at once, without waiting for it.
#
# What is measured, per kill: wait --gap-ms (default 2000), check the guest is writing, wait
# 0-99 ms more at random, then
#   outage = (first write to the image file after the old backend is gone) - (the SIGKILL),
#   ready  = (the new backend's pidfile appears: it listens) - (the SIGKILL),
# both on L1's clock (bash's $EPOCHREALTIME, no cross-clock arithmetic). ready tells the new
# backend's start-up from the VMM's reconnect (outage - ready).
# How: the guest writes 4 KiB O_DIRECT blocks one at a time (QD1), block k holding "SEQ k", one
# about every 5 ms, fed by a shell loop into one long-running dd (no process per write), so that
# during a stall the next write is always queued: the first write the new backend executes is
# the request the old one left unfinished (ours resubmits it from the in-flight region; QSD
# offers none, so QEMU restarts the ring at its used index) or the one queued meanwhile. L1
# sees it as the image's mtime becoming newer than that of a marker file truncated right after
# the old backend was reaped: tmpfs stamps every write (a rewrite of the same data too), reads
# and flushes leave mtime alone, nothing else writes the image, and bash's [[ -nt ]] compares
# nanoseconds without forking; L1 looks every 5 ms.
# (Polling the image's contents would need a dd per look in L1, several ms of emulated CPU
# each.) The guest's completion follows the write by a used-ring update and an interrupt.
# At the end L1 sends STOP on the VM's serial console; the guest reads back every block it
# wrote (O_DIRECT, through the backend) and counts dmesg's "I/O error" lines, and L1 checks the
# image file itself: "verified" = every block dd reported written holds its own number, both ways.
# Every wait in L1 is bounded (backend start 60 s, guest boot 900 s, each outage 60 s, the
# guest's report 900 s; the guest stops writing by itself after a while too), and processes
# are ended by their PIDs; a side that fails prints why and the tail of its VM's log.
#
# QEMU's chardev option is picked from the help of the QEMU in L1 (the host's, copied in as in
# the other benches). QEMU 7.2 (Debian 12) only knows `reconnect=SECONDS`, and its first attempt
# comes that long after the hang-up, so `reconnect=1` puts a ~1 s floor under QEMU's outage;
# QEMU >= 9.2 takes `reconnect-ms=MS` (`reconnect` deprecated since). --qemu-reconnect-ms
# (default 1000) is rounded up to whole seconds for the old spelling. splitvisor's vmm tries
# again at once, then backs off from 1 to 100 ms (docs/architecture.md, "When a backend goes
# away").
#
# Output: one line per kill per side, then a table: median and max outage, the ratio ours/QEMU
# of the medians (and of the maxima), guest I/O errors, failed writes, verification. Exits
# non-zero when a side could not run or measured fewer kills than asked.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KILLS=10 GAP_MS=2000 QEMU_RECONNECT_MS=1000
usage() {
    echo "usage: bench/reconnect.sh [--kills N] [--gap-ms MS] [--qemu-reconnect-ms MS]" >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case "$1" in
        --kills | --gap-ms | --qemu-reconnect-ms)
            [ $# -ge 2 ] || usage
            case "$1" in
                --kills) KILLS="$2" ;;
                --gap-ms) GAP_MS="$2" ;;
                --qemu-reconnect-ms) QEMU_RECONNECT_MS="$2" ;;
            esac
            shift 2
            ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) usage ;;
    esac
done
for v in "$KILLS" "$GAP_MS" "$QEMU_RECONNECT_MS"; do
    case "$v" in '' | *[!0-9]*) usage ;; esac
done
[ "$KILLS" -ge 1 ] && [ "$KILLS" -le 1000 ] || { echo "--kills must be 1 to 1000" >&2; exit 2; }
[ "$QEMU_RECONNECT_MS" -ge 1 ] || { echo "--qemu-reconnect-ms must be at least 1" >&2; exit 2; }
[ "$KILLS" -ge 10 ] || echo "[bench] fewer than 10 kills: the medians will say little" >&2

scripts/install-deps.sh >/dev/null
scripts/guest-kit.sh >/dev/null
cargo build --release --workspace --bins --quiet
for tool in qemu-system-x86_64 qemu-storage-daemon bash ldd; do
    command -v "$tool" >/dev/null || { echo "$tool missing: scripts/install-deps.sh" >&2; exit 1; }
done
# the libraries the sandbox copies for qemu-storage-daemon (/job/hostlib), by file name
QSD_LIBS="$(ldd "$(command -v qemu-storage-daemon)" | awk '/=> \// { n = split($3, p, "/"); print p[n] }' | tr '\n' ' ')"

# ---- the guest (busybox sh in L2, via sv.cmd64; comments and indentation are stripped, the
# kernel command line holds 2 KiB) ----
IFS= read -r -d '' GUEST <<'EOF' || true
# 4 KiB blocks: busybox dd aligns its buffer for O_DIRECT only from 4 KiB up
D=/dev/vda L=1
i=0
until [ -b $D ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i + 1)); done
N=$(($(cat /sys/block/vda/size) / 8))
mkfifo /tmp/t
# stop on STOP from L1 on the console, or after @MAXS@ s whatever happens
(l=; until [ "$l" = STOP ]; do read -r l || sleep 1; done; : >/tmp/s) </dev/console &
(sleep @MAXS@; : >/tmp/s) &
# block k holds "SEQ k"; the next record every ~5 ms (read -t on a FIFO: a sleep without a fork)
p() {
    k=$1
    while [ ! -e /tmp/s ]; do
        printf '%-4095s\n' "SEQ $k"
        k=$((k + 1))
        read -r -t 0.005 _ <>/tmp/t
    done
}
o=$L e=0
echo BENCH-WRITER-START
# one dd for all writes; after a failed write, a new dd goes on from the block that failed
while [ ! -e /tmp/s ] && [ $o -lt $N ] && [ $e -lt 50 ]; do
    p $o | dd of=$D bs=4096 seek=$o count=$((N - o)) oflag=direct iflag=fullblock conv=notrunc 2>/tmp/e
    r=$?
    n=$(sed -n 's/^\([0-9]*\)+[0-9]* records out$/\1/p' /tmp/e)
    o=$((o + ${n:-0}))
    [ $r = 0 ] || { e=$((e + 1)); echo "BENCH-WRITE-ERROR $(head -n 1 /tmp/e)"; }
done
[ $o -lt $N ] || echo BENCH-LOG-FULL
n=$((o - L))
v=$(dd if=$D bs=1M skip=$((L * 4096)) count=$((n * 4096)) iflag=direct,skip_bytes,count_bytes 2>/dev/null | cut -c 1-24 | awk -v s=$L '$1 != "SEQ" || $2 != s + NR - 1 { b++ } END { print NR + 0, b + 0 }')
echo "BENCH-GUEST $n $e $v $(dmesg | grep -ci 'i/o error')"
EOF
# the guest gives up by itself long after L1 would have (a bound, not a schedule)
MAXS=$((900 + KILLS * (GAP_MS / 1000 + 80)))
GUEST="$(printf '%s' "${GUEST//@MAXS@/$MAXS}" | sed -e 's/^[[:space:]]*//' -e '/^#/d' -e '/^$/d')"
G64="$(printf '%s\n' "$GUEST" | base64 -w0)"
[ $((${#G64} + 40)) -lt 2048 ] || { echo "the guest script is too long for a kernel command line (${#G64} bytes of base64)" >&2; exit 1; }

# ---- L1 (the host's bash, copied in: $EPOCHREALTIME, [[ -nt ]] in nanoseconds) ----
IFS= read -r -d '' L1 <<'EOF' || true
# reconnect-l1.sh KILLS GAP_MS RECONNECT_MS GUEST64 QSD_LIBS; prints BENCH lines on the console
set -u
KILLS=$1 GAP_MS=$2 RECONNECT_MS=$3 G64=$4 QSD_LIBS=$5
W=/tmp/reconnect
POLL=0.005             # seconds between looks at the image file
LIMIT_US=60000000      # a backend not back within 60 s ends that side's series
IMG_MIB=$((256 + KILLS * (GAP_MS / 1000 + 5)))   # the guest writes <= ~0.8 MiB/s, while kills run
VM="" BPID="" SIDE=l1 LOG=/dev/null

end_pid() { # end_pid PID: SIGTERM, SIGKILL after 5 s, reaped
    local i=0
    kill "$1" 2>/dev/null || return 0
    while kill -0 "$1" 2>/dev/null && [ $i -lt 100 ]; do nap 0.05; i=$((i + 1)); done
    kill -9 "$1" 2>/dev/null
    wait "$1" 2>/dev/null
}
cleanup() {
    [ -z "$VM" ] || kill -9 "$VM" 2>/dev/null
    [ -z "$BPID" ] || kill -9 "$BPID" 2>/dev/null
    wait 2>/dev/null
}
trap cleanup EXIT

mkdir -p $W/bin $W/lib
mkfifo $W/tick
exec 8<>$W/tick
nap() { read -r -t "$1" -u 8 _ || :; } # a sleep without a fork: nobody writes this FIFO (status 0)

cp /sv-bin/splitvisor-blk /job/hostbin/.real/qemu-storage-daemon $W/bin/ ||
    { echo "BENCH l1 FAILED cannot copy the backends into L1's tmpfs"; exit 1; }
for l in $QSD_LIBS; do
    cp "/job/hostlib/$l" $W/lib/ || { echo "BENCH l1 FAILED cannot copy $l"; exit 1; }
done
# (only qemu-storage-daemon gets these: exported, the host's libc would also go to
# splitvisor-blk, splitvisor and every other program started here)

QV=$(qemu-system-x86_64 --version | head -n 1)
if qemu-system-x86_64 -help 2>/dev/null | grep -q 'reconnect-ms='; then
    RC="reconnect-ms=$RECONNECT_MS"
else
    RC="reconnect=$(((RECONNECT_MS + 999) / 1000))"
fi
echo "BENCH l1 qemu-version $QV"
echo "BENCH l1 qemu-chardev $RC"

say() { echo "BENCH $SIDE $*"; }

start_backend() { # start_backend PIDFILE: the same command line every time; its PID in BPID
    if [ $SIDE = sv ]; then
        $W/bin/splitvisor-blk --socket $SOCK --image $IMG --format raw --pidfile "$1" \
            2>>$W/sv-blk.err 7>&- 8>&- &
    else
        LD_LIBRARY_PATH=$W/lib $W/bin/qemu-storage-daemon \
            --blockdev driver=file,node-name=f,filename=$IMG,cache.direct=off,aio=io_uring \
            --blockdev driver=raw,node-name=d,file=f \
            --export type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path=$SOCK,writable=on,num-queues=1 \
            --pidfile "$1" 2>>$W/qsd.err 7>&- 8>&- &
    fi
    BPID=$!
}

start_vm() {
    local cmd="console=ttyS0 quiet sv.cmd64=$G64"
    if [ $SIDE = sv ]; then
        splitvisor --kernel $KIT/l2/vmlinuz --initramfs $KIT/l2/initramfs-min.cpio.gz --cpus 1 \
            --memory 256M --cmdline "$cmd" --device vhost-user,type=blk,socket=$SOCK \
            <$CONS >$LOG 2>&1 7>&- 8>&- &
    else
        qemu-system-x86_64 -L /usr/share/qemu -L /usr/share/seabios -accel kvm -cpu host -smp 1 \
            -m 256M -nodefaults -no-user-config -display none -serial stdio -no-reboot \
            -object memory-backend-memfd,id=mem,size=256M,share=on -machine memory-backend=mem \
            -chardev socket,id=vub,path=$SOCK,$RC -device vhost-user-blk-pci,chardev=vub,num-queues=1 \
            -kernel $KIT/l2/vmlinuz -initrd $KIT/l2/initramfs-min.cpio.gz -append "$cmd" \
            <$CONS >$LOG 2>&1 7>&- 8>&- &
    fi
    VM=$!
}

wait_file() { # wait_file PATH SECONDS
    local i=0
    until [ -e "$1" ]; do
        i=$((i + 1))
        [ $i -le $(($2 * 20)) ] || return 1
        nap 0.05
    done
    return 0 # (a loop's status is its body's last: nap's, 142 on its timeout)
}

wait_log() { # wait_log MARKER SECONDS: until the VM's log has MARKER; 1 if the VM ended first
    local i=0
    until grep -aq "$1" $LOG; do
        kill -0 $VM 2>/dev/null || { grep -aq "$1" $LOG; return; }
        i=$((i + 1))
        [ $i -le $(($2 * 2)) ] || return 1
        nap 0.5
    done
    return 0
}

stop_side() {
    [ -z "$VM" ] || { kill -9 $VM 2>/dev/null; wait $VM 2>/dev/null; }
    [ -z "$BPID" ] || end_pid $BPID
    VM="" BPID=""
    exec 7>&-
}

fail() {
    say "FAILED $*"
    tail -n 25 $LOG 2>/dev/null | tr -d '\r' | sed 's/^/  vm| /'
    stop_side
    return 1
}

verify() { # verify BLOCKS: "records bad" of the image file, read in L1 (no backend involved)
    dd if=$IMG bs=1M skip=4096 count=$(($1 * 4096)) iflag=skip_bytes,count_bytes 2>/dev/null |
        cut -c 1-24 | awk '$1 != "SEQ" || $2 != NR { b++ } END { print NR + 0, b + 0 }'
}

run_side() { # run_side sv|qemu
    SIDE=$1 IMG=$W/$1.raw SOCK=$W/$1.sock LOG=$W/$1.log CONS=$W/$1.console REF=$W/$1.ref
    local k i d t t0 t1 tready pf gap g gn ge gr gb gi
    rm -f $SOCK
    truncate -s ${IMG_MIB}M $IMG
    mkfifo $CONS
    exec 7<>$CONS # the VM's console input, open before the VM opens it
    start_backend $W/$1.pid.0
    local err=$W/sv-blk.err
    [ $SIDE = sv ] || err=$W/qsd.err
    wait_file $W/$1.pid.0 60 || { fail "the backend did not start ($(tail -n 3 $err 2>/dev/null | tr '\n' ' '))"; return 1; }
    : >$LOG # (the VM's own redirection happens in its child: wait_log may look first)
    start_vm
    wait_log BENCH-WRITER-START 900 || { fail "the guest did not start writing"; return 1; }
    printf -v gap '%d.%03d' $((GAP_MS / 1000)) $((GAP_MS % 1000))
    for ((k = 1; k <= KILLS; k++)); do
        nap $gap
        # the guest is writing: the image changes within ~10 s
        : >$REF
        i=0
        until [[ $IMG -nt $REF ]]; do
            i=$((i + 1))
            [ $i -le 2000 ] || { fail "the guest stopped writing before kill $k"; return 1; }
            nap $POLL
        done
        printf -v d '0.%03d' $((RANDOM % 100))
        nap $d
        t0=${EPOCHREALTIME/./}
        kill -9 $BPID
        wait $BPID 2>/dev/null
        : >$REF # from here on, only the new backend writes the image
        pf=$W/$1.pid.$k
        start_backend $pf
        tready=""
        while :; do
            t=${EPOCHREALTIME/./}
            [[ -n $tready || ! -e $pf ]] || tready=$t
            [[ $IMG -nt $REF ]] && break
            if ((t - t0 > LIMIT_US)); then
                fail "kill $k: no guest write completed within $((LIMIT_US / 1000000)) s"
                return 1
            fi
            nap $POLL
        done
        t1=${EPOCHREALTIME/./}
        [[ -n $tready ]] || tready=$t1
        say "kill $k outage_us $((t1 - t0)) ready_us $((tready - t0))"
    done
    echo STOP >&7
    wait_log BENCH-GUEST 900 || { fail "the guest did not report after STOP"; return 1; }
    i=0
    while kill -0 $VM 2>/dev/null && [ $i -lt 240 ]; do nap 0.5; i=$((i + 1)); done
    g=$(grep -ao 'BENCH-GUEST [0-9 ]*' $LOG | tail -n 1)
    read -r _ gn ge gr gb gi _ <<<"$g"
    [[ -n ${gi:-} ]] || { fail "the guest's report is incomplete: '$g'"; return 1; }
    say "guest records $gn write_errors $ge readback_records $gr readback_bad $gb io_errors $gi"
    say "file $(verify $gn | awk '{ print "records", $1, "bad", $2 }')"
    grep -aq BENCH-LOG-FULL $LOG && say "note the guest's log filled the disk"
    if [ $SIDE = sv ]; then
        say "vmm reconnects $(grep -ac 'the vhost-user backend is back' $LOG) outage_ms $(grep -ao 'outage_ms=[0-9]*' $LOG | cut -d= -f2 | tr '\n' ' ')"
    fi
    stop_side
}

rc=0
run_side sv || rc=1
run_side qemu || rc=1
exit $rc
EOF

TIMEOUT=$((1500 + KILLS * 2 * (GAP_MS / 1000 + 15)))
RAW="$(mktemp)"
trap 'rm -f "$RAW"' EXIT
status=0
target/release/sv-sandbox --timeout "$TIMEOUT" --host-tool qemu-system-x86_64 \
    --host-tool qemu-storage-daemon --host-tool bash \
    --host-dir /usr/share/qemu --host-dir /usr/share/seabios \
    "echo '$(printf '%s' "$L1" | base64 -w0)' | base64 -d >/tmp/reconnect-l1.sh &&
     exec /job/hostbin/bash /tmp/reconnect-l1.sh $KILLS $GAP_MS $QEMU_RECONNECT_MS $G64 '$QSD_LIBS'" \
    2>&1 | tee "$RAW" >&2 || status=$?
out="$(tr -d '\r' <"$RAW" | sed -n 's/^L1| //p' | grep -a '^BENCH ' || true)"

# ---- report ----
median() { [ $# -gt 0 ] || { echo -; return; }; printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else printf "%.1f", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
maximum() { [ $# -gt 0 ] || { echo -; return; }; printf '%s\n' "$@" | sort -n | tail -n 1 | awk '{ printf "%.1f", $1 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }
ms() { awk -v s="$1" -v f="$2" '$2 == s && $3 == "kill" { for (i = 5; i < NF; i++) if ($i == f) printf "%.1f\n", $(i + 1) / 1000 }' <<<"$out"; }
field() { awk -v s="$1" -v w="$2" -v f="$3" '$2 == s && $3 == w { for (i = 4; i < NF; i++) if ($i == f) v = $(i + 1) } END { print (v == "" ? "-" : v) }' <<<"$out"; }
# first() PREFIX: the rest of the first BENCH line that starts with PREFIX
first() { awk -v p="$1" 'index($0, p) == 1 { print substr($0, length(p) + 1); exit }' <<<"$out"; }
name() { if [ "$1" = sv ]; then echo "splitvisor"; else echo "QEMU"; fi; }

QV="$(first "BENCH l1 qemu-version QEMU emulator version " | cut -d' ' -f1)"
QRC="$(first "BENCH l1 qemu-chardev ")"
echo
echo "per kill (outage: SIGKILL -> the first guest write the new backend executes; ready: SIGKILL -> the new backend's pidfile)"
for side in sv qemu; do
    awk -v n="$(name $side)" -v s=$side '$2 == s && $3 == "kill" {
        printf "%-10s kill %3d  outage %9.1f ms  ready %8.1f ms\n", n, $4, $6 / 1000, $8 / 1000 }' <<<"$out"
done

declare -A MED MAX RDY N VER IOE WE
fatal=() notes=()
l1why="$(first "BENCH l1 FAILED ")"
[ -z "$l1why" ] || fatal+=("L1 could not set up: $l1why")
for side in sv qemu; do
    mapfile -t o < <(ms $side outage_us)
    mapfile -t r < <(ms $side ready_us)
    N[$side]=${#o[@]}
    MED[$side]="$(median "${o[@]}")"
    MAX[$side]="$(maximum "${o[@]}")"
    RDY[$side]="$(median "${r[@]}")"
    recs="$(field $side guest records)"
    ok=no
    if [ "$recs" != - ] && [ "$recs" -gt 0 ] &&
        [ "$(field $side guest readback_records)" = "$recs" ] && [ "$(field $side guest readback_bad)" = 0 ] &&
        [ "$(field $side file records)" = "$recs" ] && [ "$(field $side file bad)" = 0 ]; then
        ok=yes
    fi
    if [ "$recs" = - ]; then
        VER[$side]="-"
    else
        VER[$side]="$ok ($recs blocks; readback: $(field $side guest readback_records) read, $(field $side guest readback_bad) bad; file: $(field $side file records) read, $(field $side file bad) bad)"
    fi
    IOE[$side]="$(field $side guest io_errors)"
    WE[$side]="$(field $side guest write_errors)"
    why="$(first "BENCH $side FAILED ")"
    if [ "${N[$side]}" -eq 0 ]; then
        fatal+=("$(name $side) could not run${why:+: $why}")
    elif [ "${N[$side]}" -lt "$KILLS" ]; then
        fatal+=("$(name $side): only ${N[$side]} of $KILLS kills measured${why:+: $why}")
    elif [ -n "$why" ]; then
        fatal+=("$(name $side): $why")
    elif [ "$recs" = - ]; then
        fatal+=("$(name $side): the guest did not report its writes")
    fi
    [ "$ok" = yes ] || [ "$recs" = - ] || notes+=("$(name $side): the guest's writes did NOT verify (see the table)")
    note="$(first "BENCH $side note ")"
    [ -z "$note" ] || notes+=("$(name $side): $note")
done

echo
echo "| | splitvisor + splitvisor-blk | QEMU ${QV:-?} ($QRC) + qemu-storage-daemon | ratio ours / QEMU |"
echo "| --- | --- | --- | --- |"
echo "| kills measured | ${N[sv]} of $KILLS | ${N[qemu]} of $KILLS | |"
echo "| guest-visible outage, median (ms) | ${MED[sv]} | ${MED[qemu]} | **$(ratio "${MED[sv]}" "${MED[qemu]}")** |"
echo "| guest-visible outage, max (ms) | ${MAX[sv]} | ${MAX[qemu]} | $(ratio "${MAX[sv]}" "${MAX[qemu]}") |"
echo "| new backend listening, median (ms after the kill) | ${RDY[sv]} | ${RDY[qemu]} | $(ratio "${RDY[sv]}" "${RDY[qemu]}") |"
echo "| guest I/O errors (dmesg \"I/O error\") | ${IOE[sv]} | ${IOE[qemu]} | |"
echo "| guest writes that failed (dd) | ${WE[sv]} | ${WE[qemu]} | |"
echo "| writes verified afterwards (guest O_DIRECT readback and the image file in L1) | ${VER[sv]} | ${VER[qemu]} | |"
own="$(sed -n 's/^BENCH sv vmm reconnects \([0-9]*\) outage_ms \(.*\)/\1 reconnects; its own outage_ms (hang-up -> rings replayed): \2/p' <<<"$out")"
[ -z "$own" ] || echo "splitvisor's vmm: $own"

echo
for f in "${notes[@]}"; do echo "bench/reconnect.sh: $f" >&2; done
[ "$status" -eq 0 ] || echo "bench/reconnect.sh: the sandbox job exited with status $status" >&2
[ -n "$out" ] || fatal+=("the sandbox run printed no results; see its console above")
if [ ${#fatal[@]} -gt 0 ]; then
    for f in "${fatal[@]}"; do echo "bench/reconnect.sh: $f" >&2; done
    exit 1
fi
