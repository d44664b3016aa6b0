//! What /proc says of a process the test started: each thread's name and `status` fields
//! (`Seccomp:`, `Uid:`, `CapEff:` …), for the confinement tests.

/// One field of a `status` text, trimmed (`None` when absent).
pub fn field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

/// Each thread of process `pid`: its name and the value of `key` in its `status`.
pub fn thread_field(pid: u32, key: &str) -> Vec<(String, Option<String>)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let t = t.ok()?.path();
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            let status = std::fs::read_to_string(t.join("status")).unwrap_or_default();
            Some((
                comm.trim().to_string(),
                field(&status, key).map(String::from),
            ))
        })
        .collect()
}

/// The value of `key` in process `pid`'s `status` (empty when the process is gone).
pub fn process_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    field(&status, key).unwrap_or_default().to_string()
}
