//! The "COUNT N" lines a migrating guest prints once a second, and what a destination's
//! console must show for the guest to have moved without a reboot or a lost iteration.

/// Every full "COUNT N" line in `text`, in order.
pub fn counts(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("COUNT ")?.trim().parse().ok())
        .collect()
}

/// Checks that the counts in `text` (a destination's console, called `name` in messages)
/// go on from `last` (the source's last full count; an iteration cut by the pause may show
/// again) one by one, and that the guest did not boot again. The serial port sends byte by
/// byte, so the switch may cut a line: the console then starts with the rest of it
/// ("OUNT 109"), which completes the count after `last`. Returns the counts.
pub fn check_counts_on(name: &str, text: &str, last: u64) -> Result<Vec<u64>, String> {
    let c = counts(text);
    let first = *c
        .first()
        .ok_or_else(|| format!("{name} has no count: {text}"))?;
    let fragment = text.lines().next().unwrap_or_default().trim();
    let cut = counts(fragment).is_empty()
        && !fragment.is_empty()
        && format!("COUNT {}", first.saturating_sub(1)).ends_with(fragment);
    let start = if cut { first.saturating_sub(1) } else { first };
    if start + 1 < last || start > last + 1 {
        return Err(format!("{name} starts at {start} after {last}: {text}"));
    }
    if !c.windows(2).all(|w| w[1] == w[0] + 1) {
        return Err(format!("{name} skipped: {c:?}"));
    }
    if text.contains("Linux version") {
        return Err(format!("{name} booted again: {text}"));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_going_on_pass() {
        assert_eq!(
            check_counts_on("c", "COUNT 9\nCOUNT 10\n", 9),
            Ok(vec![9, 10])
        );
        assert!(check_counts_on("c", "COUNT 10\nCOUNT 11\n", 9).is_ok());
    }

    #[test]
    fn a_line_cut_by_the_switch_completes_the_count() {
        assert!(check_counts_on("c", "OUNT 109\nCOUNT 110\n", 108).is_ok());
        assert!(check_counts_on("c", "9\nCOUNT 110\n", 108).is_ok());
        // a fragment of another line does not excuse a lost count
        assert!(check_counts_on("c", "OUNT 1\nCOUNT 110\n", 108).is_err());
        assert!(check_counts_on("c", "COUNT 110\n", 108).is_err());
    }

    #[test]
    fn a_gap_a_reboot_or_no_count_fails() {
        assert!(check_counts_on("c", "COUNT 10\nCOUNT 12\n", 9).is_err());
        assert!(check_counts_on("c", "Linux version 6\nCOUNT 10\n", 9).is_err());
        assert!(check_counts_on("c", "login:\n", 9).is_err());
    }
}
