# Sourced by bench/blk.sh and bench/blk-ab.sh: start_blk_backends QUEUES starts splitvisor-blk
# (with $SV_BLK_ARGS) and qemu-storage-daemon's vhost-user-blk export on "$IMG", both O_DIRECT,
# serving $WORK/sv.sock and $WORK/qsd.sock; their PIDs go to PIDS; returns once both listen.
# harness_pages QUEUES sets HARNESS_ARGS (and FIO_MEM for fio), the memory sv-blkbench (the
# frontend) gives them: BENCH_PAGES=2m (default) backs it with 2 MiB huge pages, reserving
# enough in /proc/sys/vm/nr_hugepages (restore_hugepages, called on exit, puts the old count
# back); BENCH_PAGES=4k uses ordinary pages; any other value is refused when this is sourced. With 4 KiB pages each 1 MiB buffer is as contiguous as
# the kernel happened to make it, and the disk's request merging - so the 1 MiB rows - follows
# that lottery (range 1146-1917 IOPS between runs of one backend); with 2 MiB pages both
# backends get whole buffers, like a guest started with hugepages=on.

case "${BENCH_PAGES:=2m}" in 2m | 4k) ;; *) echo "BENCH_PAGES must be 2m or 4k, not $BENCH_PAGES" >&2; exit 2 ;; esac
NR_HUGEPAGES=/proc/sys/vm/nr_hugepages FREE_HUGEPAGES=/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages
HUGEPAGES_BEFORE="$(cat "$NR_HUGEPAGES")"

harness_pages() {
    local need=$(($1 * 32)) free # sv-blkbench maps 64 MiB per queue
    if [ "$BENCH_PAGES" = 4k ]; then
        HARNESS_ARGS=() FIO_MEM=()
        return
    fi
    free="$(cat "$FREE_HUGEPAGES")"
    if [ "$free" -lt "$need" ]; then
        echo $(($(cat "$NR_HUGEPAGES") + need - free)) >"$NR_HUGEPAGES"
        free="$(cat "$FREE_HUGEPAGES")"
        [ "$free" -ge "$need" ] || {
            echo "only $free of $need 2 MiB huge pages could be reserved; BENCH_PAGES=4k runs without" >&2
            exit 1
        }
    fi
    # fio's buffers come from the same pool, for its ceiling column
    HARNESS_ARGS=(--hugepages) FIO_MEM=(--iomem=shmhuge)
}

restore_hugepages() {
    [ "$(cat "$NR_HUGEPAGES")" = "$HUGEPAGES_BEFORE" ] || echo "$HUGEPAGES_BEFORE" >"$NR_HUGEPAGES"
}

start_blk_backends() {
    local q="$1" extra s
    read -r -a extra <<<"${SV_BLK_ARGS:-}"
    "$BIN/splitvisor-blk" --socket "$WORK/sv.sock" --image "$IMG" --direct --queues "$q" "${extra[@]}" &
    PIDS+=($!)
    qemu-storage-daemon \
        --blockdev "driver=file,node-name=f,filename=$IMG,cache.direct=on,aio=io_uring" \
        --blockdev driver=raw,node-name=d,file=f \
        --export "type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path=$WORK/qsd.sock,writable=on,num-queues=$q" &
    PIDS+=($!)
    for s in sv qsd; do
        for _ in $(seq 100); do [ -S "$WORK/$s.sock" ] && break; sleep 0.1; done
        [ -S "$WORK/$s.sock" ] || { echo "no socket $WORK/$s.sock" >&2; exit 1; }
    done
}
