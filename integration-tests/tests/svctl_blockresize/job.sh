# A domain with a raw and a qcow2 disk (64 MiB each): the guest makes an ext4 on each and
# mounts it; both are grown while mounted, the guest grows the filesystems (resize2fs) and
# fills more than the old size held; shut off, the qcow2 disk is grown once more.
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
    return 1
}
truncate -s 64M $W/disk.raw
qemu-img create -q -f qcow2 $W/disk.qcow2 64M

step install
sv install --name vm1 --memory 256M --no-balloon \
    --disk path=$W/disk.raw,format=raw --disk path=$W/disk.qcow2,format=qcow2 \
    --kernel $L2_KERNEL --initramfs $KIT/l2/initramfs.cpio.gz \
    --cmdline "console=ttyS0 quiet sv.cmd64=$GUEST64"
wait_console con1.txt GUEST-MOUNTED 300 || echo "NO-MOUNT" >> $S
step shrink-refused
sv blockresize vm1 vda 32M
step grow-vda
sv blockresize vm1 vda 128M
step grow-vdb
sv --json blockresize vm1 vdb 160M
step grow-unknown
sv blockresize vm1 vdz 1G
wait_console con2.txt GUEST-DONE 600 || echo "NO-GUEST-DONE" >> $S
step destroy
sv destroy vm1
step domstate-after
sv domstate vm1
step grow-offline
sv blockresize vm1 vdb 192M
step qemu-img-info
qemu-img info --output=json $W/disk.qcow2 >> $S 2>&1
step qemu-img-check
qemu-img check $W/disk.qcow2 >> $S 2>&1
echo "rc=$? (qemu-img check)" >> $S
echo "RAW-SIZE $(stat -c %s $W/disk.raw)" >> $S
step leftovers
for f in /proc/[0-9]*/cmdline; do
    tr '\0' ' ' < $f 2>/dev/null | grep -E '^[^ ]*(splitvisor|svctl)' || true
done >> $S
