#!/usr/bin/env bash
# extract-vmlinux.sh BZIMAGE OUT: the uncompressed ELF vmlinux inside a bzImage.
# Reads the boot protocol header (setup_sects at 0x1f1, payload_offset/payload_length at
# 0x248/0x24c) instead of scanning for magic numbers, then picks the decompressor by the
# payload's own magic. The result keeps the ELF notes (PVH entry: XEN_ELFNOTE_PHYS32_ENTRY).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 BZIMAGE OUT" >&2; exit 2; }
in="$1"; out="$2"
u8() { od -An -tu1 -j "$2" -N1 "$1" | tr -d ' '; }
u32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }
[ "$(dd if="$in" bs=1 skip=$((0x202)) count=4 2>/dev/null)" = "HdrS" ] ||
    { echo "extract-vmlinux: $in is not a bzImage (no HdrS header)" >&2; exit 1; }
setup_sects=$(u8 "$in" $((0x1f1)))
[ "$setup_sects" -eq 0 ] && setup_sects=4
offset=$(( (setup_sects + 1) * 512 + $(u32 "$in" $((0x248))) ))
length=$(u32 "$in" $((0x24c)))
payload() { dd if="$in" bs=1M iflag=skip_bytes,count_bytes skip="$offset" count="$length" 2>/dev/null; }
magic=$(dd if="$in" bs=1 skip="$offset" count=4 2>/dev/null | od -An -tx1 | tr -d ' \n')
case "$magic" in
    02214c18) dec="lz4 -dc" ;;
    1f8b*) dec="gzip -dc" ;;
    fd377a58) dec="xz -dc" ;;
    28b52ffd) dec="zstd -dc" ;;
    *) echo "extract-vmlinux: unknown compression (magic $magic) in $in" >&2; exit 1 ;;
esac
# decompressors may complain about the size trailer after the stream; the ELF check decides
payload | $dec >"$out.tmp" 2>/dev/null || true
[ "$(dd if="$out.tmp" bs=1 count=4 2>/dev/null | od -An -tx1 | tr -d ' \n')" = "7f454c46" ] ||
    { echo "extract-vmlinux: decompressed payload of $in is not an ELF file" >&2; exit 1; }
mv "$out.tmp" "$out"
