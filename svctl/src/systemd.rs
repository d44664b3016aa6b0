//! `svctl autostart` and systemd: when systemd runs this machine and our unit is installed,
//! the domain's `splitvisor-domain@NAME.service` (systemd/, which runs the same supervisor as
//! `svctl start`) is enabled (or disabled) too. Without systemd only the domain's
//! `autostart` flag changes.

use std::path::Path;
use std::process::Command;

const UNIT_DIRS: [&str; 3] = [
    "/etc/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// The unit enabled or disabled, or None when systemd does not manage this machine.
pub fn set_enabled(name: &str, enable: bool) -> Result<Option<String>, String> {
    let running = Path::new("/run/systemd/system").is_dir();
    let installed = UNIT_DIRS
        .iter()
        .any(|d| Path::new(d).join("splitvisor-domain@.service").exists());
    if !running || !installed {
        return Ok(None);
    }
    let unit = format!("splitvisor-domain@{name}.service");
    let verb = if enable { "enable" } else { "disable" };
    let status = Command::new("systemctl")
        .args([verb, &unit])
        .status()
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    if !status.success() {
        return Err(format!("systemctl {verb} {unit} failed ({status})"));
    }
    Ok(Some(unit))
}
