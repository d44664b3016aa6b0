//! What every splitvisor vhost-user backend process shares: logging, the listening socket
//! (path, inherited descriptor or systemd activation), readiness notification, signals and the
//! serve loop that accepts one frontend after another.

pub mod logging;
pub mod readiness;
pub mod serve;
pub mod signals;
pub mod socket;

/// An error and its causes on one line: "outer: cause: root cause".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
