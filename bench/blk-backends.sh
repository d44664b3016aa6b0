# Sourced by bench/blk.sh and bench/blk-ab.sh: start_blk_backends QUEUES starts splitvisor-blk
# (with $SV_BLK_ARGS) and qemu-storage-daemon's vhost-user-blk export on "$IMG", both O_DIRECT,
# serving $WORK/sv.sock and $WORK/qsd.sock; their PIDs go to PIDS; returns once both listen.

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
