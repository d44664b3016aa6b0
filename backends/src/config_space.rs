//! Reading a device's configuration space for GET_CONFIG.

/// `size` bytes of the configuration space `space` from `offset`, as GET_CONFIG answers them:
/// always exactly `size` bytes, zero past the end of what the device defines (a frontend may
/// ask for a newer, longer struct; the vhost crate turns an answer of any other length into an
/// error for the frontend). Never panics, whatever the offset and size; the vhost crate
/// already refuses requests that end past 4 KiB, which bounds the allocation.
pub fn read(space: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let mut out = vec![0u8; size as usize];
    let start = (offset as usize).min(space.len());
    let end = (offset as usize)
        .saturating_add(size as usize)
        .min(space.len());
    out[..end - start].copy_from_slice(&space[start..end]);
    out
}

/// The first window `(offset, size, answer)` of `spec` — a device's whole config struct as
/// the virtio spec lays it out, zeros in the fields the device does not fill — for which `read`
/// (the device's GET_CONFIG) does not answer exactly those bytes; `None` when every window is
/// right. The backends' tests check their GET_CONFIG with it.
pub fn first_wrong_window(
    spec: &[u8],
    read: impl Fn(u32, u32) -> Vec<u8>,
) -> Option<(usize, usize, Vec<u8>)> {
    (0..spec.len())
        .flat_map(|offset| (1..=spec.len() - offset).map(move |size| (offset, size)))
        .map(|(offset, size)| (offset, size, read(offset as u32, size as u32)))
        .find(|(offset, size, got)| got[..] != spec[*offset..offset + size])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_exactly_the_size_asked_with_zeroes_past_the_end() {
        let space = [1u8, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(read(&space, 0, 8), space.to_vec());
        assert_eq!(read(&space, 2, 3), vec![3, 4, 5]);
        assert_eq!(read(&space, 6, 4), vec![7, 8, 0, 0], "partly past the end");
        assert_eq!(read(&space, 8, 2), vec![0, 0], "just past the end");
        assert_eq!(read(&space, 200, 4), vec![0; 4], "far past the end");
        assert_eq!(read(&space, 4, 0), Vec::<u8>::new());
        // offsets and sizes whose sum overflows are no panic
        assert_eq!(read(&space, u32::MAX, 4), vec![0; 4]);
        assert_eq!(read(&space, 7, u32::MAX).len(), u32::MAX as usize);
    }

    #[test]
    fn the_window_check_finds_a_wrong_answer() {
        let spec = [1u8, 2, 3, 0, 0];
        assert_eq!(
            first_wrong_window(&spec, |o, s| read(&spec[..3], o, s)),
            None
        );
        // a device that answers short past its fields is caught at the first such window
        let short = |o: u32, s: u32| read(&spec[..3], o, s.min(3u32.saturating_sub(o)));
        assert_eq!(
            first_wrong_window(&spec, short),
            Some((0, 4, vec![1, 2, 3]))
        );
    }
}
