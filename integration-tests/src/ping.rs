//! A ping run through a migration, read back: how many it sent and got answered, and
//! whether the loss is what the pause explains.

/// `ping`'s summary line of `output`: (transmitted, received); panics naming what is missing.
pub fn counts(output: &str) -> (u64, u64) {
    let stats = output
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping statistics: {output}"));
    let num = |what: &str| -> u64 {
        stats
            .split(", ")
            .find(|p| p.contains(what))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{what}: {stats}"))
    };
    (num("transmitted"), num("received"))
}

/// A ping every `interval_ms` lost at most what a pause of `downtime_ms` explains: twice
/// that, plus 10 for the emulated machine's timing. At least `min_sent` were sent.
pub fn assert_loss_within_pause(output: &str, interval_ms: u64, downtime_ms: u64, min_sent: u64) {
    let (sent, got) = counts(output);
    let allowed = downtime_ms / interval_ms * 2 + 10;
    assert!(sent >= min_sent, "only {sent} pings sent: {output}");
    assert!(
        sent - got <= allowed,
        "lost {} pings > {allowed} (downtime {downtime_ms} ms): {output}",
        sent - got
    );
}
