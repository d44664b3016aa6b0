//! The steps file of the svctl jobs: each step a line `== NAME`, then what the commands of
//! that step printed, each followed by `rc=STATUS (command)`.

/// The output of the step named `name` in `all` (up to the next step).
pub fn step(all: &str, name: &str) -> String {
    let header = format!("== {name}");
    let mut lines = all.lines().skip_while(|l| *l != header);
    assert!(lines.next().is_some(), "step {name} missing:\n{all}");
    let body: Vec<&str> = lines.take_while(|l| !l.starts_with("== ")).collect();
    body.join("\n")
}

/// [`step`], which must have succeeded (`rc=0`).
pub fn ok(all: &str, name: &str) -> String {
    let s = step(all, name);
    assert!(s.contains("rc=0"), "step {name} failed:\n{s}");
    s
}
