//! Remote mode: `svctl -c ssh://[user@]host[:port] VERB …` (or `$SVCTL_DEFAULT_URI`) runs the
//! same verb with svctl on another host, over ssh — as `virsh -c qemu+ssh://host/system` does.
//! The remote svctl does the work on its own store and runtime; this one only carries the
//! command line there and the output (and, on a terminal, the console or the interactive
//! shell: ssh gets `-t`) back, and ends with the remote verb's exit status.
//!
//! ssh is the user's own (`ssh`, or the command line in `$SVCTL_SSH`, split on whitespace,
//! e.g. `ssh -i KEY -o BatchMode=yes`), with their keys and `~/.ssh/config`; svctl must be in
//! the remote user's PATH. The remote command line is quoted for the remote shell here
//! ([`quote`], four lines: no crate needed for POSIX single quotes).

use std::io::IsTerminal;
use std::process::{Command, ExitCode};

/// Where a URI points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

/// `ssh://[user@]host[:port][/]` → the remote; `local:` (or nothing) → None.
pub fn parse_uri(uri: &str) -> Result<Option<Remote>, String> {
    let bad = |why: &str| format!("URI {uri:?}: {why} (use ssh://[user@]host[:port])");
    if uri.is_empty() || uri == "local:" || uri == "local:///" {
        return Ok(None);
    }
    let rest = uri
        .strip_prefix("ssh://")
        .ok_or_else(|| bad("only ssh:// is known"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('?') {
        return Err(bad("no path or query is known"));
    }
    let (user, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) if !u.is_empty() => (Some(u.to_string()), h),
        Some(_) => return Err(bad("empty user")),
        None => (None, rest),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !hostport.ends_with(']') => {
            let port = p.parse().map_err(|_| bad("the port is not a number"))?;
            (h, Some(port))
        }
        _ => (hostport, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.starts_with('-') {
        return Err(bad("no host"));
    }
    Ok(Some(Remote {
        user,
        host: host.to_string(),
        port,
    }))
}

/// The command line without `-c URI` / `--connect URI` / `--connect=URI` / `-cURI` (the rest
/// goes to the remote svctl). Only before the first free argument (the verb) or after it: the
/// options are global, so both.
pub fn strip_connect(argv: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-c" | "--connect" => {
                it.next();
            }
            s if s.starts_with("--connect=") => {}
            s if s.starts_with("-c") && s.len() > 2 && !s.starts_with("--") => {}
            _ => out.push(a.clone()),
        }
    }
    out
}

/// `arg` for a POSIX shell: as is when it is plainly safe, else in single quotes.
pub fn quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// The ssh command line that runs `args` (svctl's arguments, without the program) remotely;
/// `ssh`: `$SVCTL_SSH`, or empty for plain `ssh`.
pub fn ssh_command(ssh: &str, r: &Remote, args: &[String], tty: bool) -> Vec<String> {
    let mut cmd: Vec<String> = ssh.split_whitespace().map(String::from).collect();
    if cmd.is_empty() {
        cmd.push("ssh".into());
    }
    if let Some(p) = r.port {
        cmd.extend(["-p".into(), p.to_string()]);
    }
    cmd.push(if tty { "-t" } else { "-T" }.into());
    cmd.push(match &r.user {
        Some(u) => format!("{u}@{}", r.host),
        None => r.host.clone(),
    });
    cmd.push("--".into());
    let remote: Vec<String> = std::iter::once("svctl".to_string())
        .chain(args.iter().map(|a| quote(a)))
        .collect();
    cmd.push(remote.join(" "));
    cmd
}

/// Run `args` on `r`; the remote verb's exit status.
pub fn run(r: &Remote, args: &[String], json: bool) -> ExitCode {
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let ssh = std::env::var("SVCTL_SSH").unwrap_or_default();
    let cmd = ssh_command(&ssh, r, args, tty);
    tracing::debug!(?cmd, "remote svctl");
    let status = Command::new(&cmd[0]).args(&cmd[1..]).status();
    let fail = |e: String| {
        if json {
            println!("{}", serde_json::json!({"error": e}));
        }
        eprintln!("svctl: error: {e}");
        ExitCode::FAILURE
    };
    match status {
        Err(e) => fail(format!("cannot run {}: {e}", cmd[0])),
        // ssh's own failures (no connection, refused key) are 255; svctl ends with 0, 1 or 2
        Ok(s) if s.code() == Some(255) => fail(format!(
            "cannot reach {} over ssh, or svctl is not in the remote PATH (ssh exited with 255)",
            r.host
        )),
        Ok(s) => ExitCode::from(s.code().unwrap_or(1).clamp(0, 255) as u8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(user: Option<&str>, host: &str, port: Option<u16>) -> Option<Remote> {
        Some(Remote {
            user: user.map(String::from),
            host: host.into(),
            port,
        })
    }

    #[test]
    fn ssh_uris_parse_and_others_are_refused_with_the_form() {
        assert_eq!(parse_uri("ssh://h"), Ok(remote(None, "h", None)));
        assert_eq!(
            parse_uri("ssh://root@10.0.0.2:2222/"),
            Ok(remote(Some("root"), "10.0.0.2", Some(2222)))
        );
        assert_eq!(parse_uri("ssh://[::1]"), Ok(remote(None, "::1", None)));
        assert_eq!(parse_uri("local:"), Ok(None));
        for bad in [
            "qemu:///system",
            "ssh://",
            "ssh://h:x",
            "ssh://h/system",
            "ssh://@h",
            "ssh://-oProxyCommand=x",
        ] {
            let e = parse_uri(bad).expect_err(bad);
            assert!(e.contains("use ssh://[user@]host[:port]"), "{e}");
        }
    }

    #[test]
    fn the_connect_option_stays_here_and_the_rest_goes() {
        let argv: Vec<String> = [
            "-c",
            "ssh://h",
            "--json",
            "list",
            "--all",
            "--connect=ssh://x",
            "-cssh://y",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(strip_connect(&argv), ["--json", "list", "--all"]);
    }

    #[test]
    fn arguments_are_quoted_for_the_remote_shell() {
        assert_eq!(quote("list"), "list");
        assert_eq!(quote("/srv/a b.qcow2"), "'/srv/a b.qcow2'");
        assert_eq!(quote("it's; rm -rf /"), r"'it'\''s; rm -rf /'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("$(id)"), "'$(id)'");
    }

    #[test]
    fn the_ssh_command_carries_port_user_tty_and_the_quoted_verb() {
        let r = remote(Some("op"), "host1", Some(2200)).expect("remote");
        let args = vec!["dominfo".to_string(), "my vm".to_string()];
        assert_eq!(
            ssh_command("", &r, &args, false),
            [
                "ssh",
                "-p",
                "2200",
                "-T",
                "op@host1",
                "--",
                "svctl dominfo 'my vm'"
            ]
        );
        assert_eq!(ssh_command("", &r, &args, true)[3], "-t");
        let cmd = ssh_command("ssh -i /k  -o BatchMode=yes", &r, &args, false);
        assert_eq!(cmd[..4], ["ssh", "-i", "/k", "-o"]);
    }
}
