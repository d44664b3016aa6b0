//! Giving privileges up once a process holds what it needs as descriptors (its image, tap and
//! sockets): another user and group, no capabilities left, and no way back (no_new_privs,
//! which installing the seccomp filter set already).
//!
//! Users and groups are read from /etc/passwd and /etc/group (names or numbers): the system
//! users a backend runs as (`nobody`, `splitvisor`) are local, and reading the files needs no
//! NSS module inside a process that is about to be confined.

use std::io;

/// A user and group to run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
}

/// Why privileges could not be given up.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("no user {0:?} in /etc/passwd")]
    NoUser(String),
    #[error("no group {0:?} in /etc/group")]
    NoGroup(String),
    #[error("cannot read {path}")]
    Read {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot become {user} (uid {uid}, gid {gid})")]
    Switch {
        user: String,
        uid: u32,
        gid: u32,
        #[source]
        source: io::Error,
    },
    #[error("still holding capabilities {0:#x} after becoming an unprivileged user")]
    CapabilitiesLeft(u64),
}

/// `USER[:GROUP]` (names or numbers; the group defaults to the user's) as ids.
pub fn resolve(spec: &str) -> Result<Identity, PrivilegeError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    // numbers need no /etc/passwd (a minimal root file system may have none)
    let passwd = match (read("/etc/passwd"), user.parse::<u32>()) {
        (Ok(text), _) => text,
        (Err(_), Ok(_)) => String::new(),
        (Err(e), Err(_)) => return Err(e),
    };
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| {
            f.len() >= 4
                && (f[0] == user || user.parse::<u32>().is_ok_and(|n| f[2] == n.to_string()))
        });
    let (uid, user_gid) = match (entry, user.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse()
                .map_err(|_| PrivilegeError::NoUser(user.into()))?,
            f[3].parse()
                .map_err(|_| PrivilegeError::NoUser(user.into()))?,
        ),
        // a bare number need not be listed (as with `setpriv --reuid`)
        (None, Ok(n)) => (n, n),
        (None, Err(_)) => return Err(PrivilegeError::NoUser(user.into())),
    };
    let gid = match group {
        None => user_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => read("/etc/group")?
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| PrivilegeError::NoGroup(g.into()))?,
        },
    };
    Ok(Identity {
        user: user.into(),
        uid,
        gid,
    })
}

fn read(path: &'static str) -> Result<String, PrivilegeError> {
    std::fs::read_to_string(path).map_err(|source| PrivilegeError::Read { path, source })
}

/// Become `id` on every thread (glibc carries setresuid/setresgid to all of them): the
/// supplementary groups become `id.gid` alone, and a root process that becomes another user
/// loses every capability, which is checked.
pub fn become_user(id: &Identity) -> Result<(), PrivilegeError> {
    let fail = |source| PrivilegeError::Switch {
        user: id.user.clone(),
        uid: id.uid,
        gid: id.gid,
        source,
    };
    let groups = [id.gid];
    // SAFETY: setgroups reads one gid from `groups`, which lives across the call.
    if unsafe { libc::setgroups(1, groups.as_ptr()) } != 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    // SAFETY: setresgid and setresuid take plain integers.
    if unsafe { libc::setresgid(id.gid, id.gid, id.gid) } != 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    // SAFETY: as above.
    if unsafe { libc::setresuid(id.uid, id.uid, id.uid) } != 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    if id.uid != 0 {
        let caps = capabilities().map_err(fail)?;
        if caps != 0 {
            return Err(PrivilegeError::CapabilitiesLeft(caps));
        }
    }
    Ok(())
}

/// The calling thread's permitted | effective capabilities (from /proc/thread-self/status).
pub fn capabilities() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status")?;
    let mut caps = 0;
    for key in ["CapPrm:", "CapEff:"] {
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .ok_or_else(|| io::Error::other(format!("no {key} in /proc/thread-self/status")))?;
        caps |= u64::from_str_radix(value.trim(), 16).map_err(io::Error::other)?;
    }
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_groups_resolve_by_name_and_number() {
        let root = resolve("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        let nobody = resolve("nobody").unwrap();
        assert_ne!(nobody.uid, 0);
        assert_eq!(resolve("nobody:root").unwrap().gid, 0);
        assert_eq!(
            resolve("4242:4343").unwrap(),
            Identity {
                user: "4242".into(),
                uid: 4242,
                gid: 4343
            }
        );
        assert!(matches!(
            resolve("no-such-user-here"),
            Err(PrivilegeError::NoUser(_))
        ));
        assert!(matches!(
            resolve("root:no-such-group"),
            Err(PrivilegeError::NoGroup(_))
        ));
    }
}
