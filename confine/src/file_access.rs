//! Limiting what a process can reach by name once it holds its resources: Landlock (the
//! `landlock` crate, rust-landlock upstream). Every file-system right of [`RULES_ABI`] is
//! handled, so all are refused except what [`Grant`]s allow beneath given directories.
//!
//! Landlock confines the calling thread and what it starts afterwards (restricting every
//! thread at once needs ABI 8, newer than the kernels we run on), so a process calls
//! [`restrict`] while it is single-threaded, and starts its threads after.
//! Where the kernel has no Landlock, nothing is restricted and [`restrict`] says so.

use std::path::PathBuf;

use landlock::{
    Access, AccessFs, BitFlags, CompatLevel, Compatible, LandlockStatus, PathBeneath, PathFd,
    PathFdError, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetError,
    RulesetStatus, ABI,
};

/// The Landlock ABI the rules are written for: every file-system right it knows is handled.
/// (ABI 9 adds resolving Unix socket paths, which the relay needs: it would need a grant.)
pub const RULES_ABI: ABI = ABI::V5;

#[derive(Debug, thiserror::Error)]
pub enum FileAccessError {
    #[error("cannot build the landlock ruleset")]
    Ruleset(#[from] RulesetError),
    #[error("landlock rule")]
    Path(#[from] PathFdError),
}

/// What may be done beneath one directory.
#[derive(Debug, Clone)]
pub struct Grant {
    pub dir: PathBuf,
    pub access: BitFlags<AccessFs>,
}

impl Grant {
    /// Make and remove private directories and the sockets in them (a backend's relay).
    pub fn scratch(dir: PathBuf) -> Grant {
        Grant {
            dir,
            access: AccessFs::MakeDir
                | AccessFs::MakeSock
                | AccessFs::RemoveDir
                | AccessFs::RemoveFile,
        }
    }

    /// Make, read and write regular files (the overlays a disk backend switches to for an
    /// external snapshot, in a directory of their own).
    pub fn images(dir: PathBuf) -> Grant {
        Grant {
            dir,
            access: AccessFs::MakeReg
                | AccessFs::ReadFile
                | AccessFs::WriteFile
                | AccessFs::Truncate,
        }
    }

    /// Remove files (the sockets and pidfile a process leaves behind at exit).
    pub fn remove_files(dir: PathBuf) -> Grant {
        Grant {
            dir,
            access: AccessFs::RemoveFile.into(),
        }
    }
}

/// How far the kernel enforced the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforced {
    /// Every handled right (the kernel's ABI is at least [`RULES_ABI`]).
    Fully { abi: i32 },
    /// The rights this kernel's older ABI knows.
    Partly { abi: i32 },
    /// Nothing: the kernel has no Landlock, or it is not enabled.
    Not { why: &'static str },
}

/// The rules, built (each directory opened) but not yet in force: a process prepares them
/// while it can still reach the directories (before it gives its user up), then
/// [`restrict`]s.
pub struct Prepared {
    ruleset: RulesetCreated,
    dirs: Vec<String>,
}

/// Build the rules allowing `grants`.
pub fn prepare(grants: &[Grant]) -> Result<Prepared, FileAccessError> {
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(RULES_ABI))?
        .create()?;
    for g in grants {
        ruleset = ruleset.add_rule(PathBeneath::new(PathFd::new(&g.dir)?, g.access))?;
    }
    let dirs = grants.iter().map(|g| g.dir.display().to_string()).collect();
    Ok(Prepared { ruleset, dirs })
}

/// Confine the calling thread (and every thread and process it starts afterwards) to the
/// prepared rules; one log line says what the kernel enforced.
pub fn restrict(name: &str, prepared: Prepared) -> Result<Enforced, FileAccessError> {
    let Prepared { ruleset, dirs } = prepared;
    let status = ruleset.restrict_self()?;
    let enforced = match (status.landlock, status.ruleset) {
        (LandlockStatus::NotImplemented, _) => Enforced::Not {
            why: "this kernel has no Landlock (not built in, or older than 5.13)",
        },
        (LandlockStatus::NotEnabled, _) => Enforced::Not {
            why: "Landlock is built in but not enabled at boot (lsm= lacks it)",
        },
        (_, RulesetStatus::NotEnforced) => Enforced::Not {
            why: "the kernel enforced none of the rules",
        },
        (LandlockStatus::Available { effective_abi, .. }, RulesetStatus::FullyEnforced) => {
            Enforced::Fully {
                abi: effective_abi as i32,
            }
        }
        (LandlockStatus::Available { effective_abi, .. }, RulesetStatus::PartiallyEnforced) => {
            Enforced::Partly {
                abi: effective_abi as i32,
            }
        }
    };
    match &enforced {
        Enforced::Fully { abi } => tracing::info!(
            "{name}: landlock ABI {abi}: no file reachable by name but beneath {dirs:?}"
        ),
        Enforced::Partly { abi } => tracing::info!(
            "{name}: landlock ABI {abi} (rules for {}): no file reachable by name but \
             beneath {dirs:?}, for the rights this kernel knows",
            RULES_ABI as i32
        ),
        Enforced::Not { why } => {
            tracing::warn!("{name}: landlock: {why}: file access is NOT restricted")
        }
    }
    Ok(enforced)
}
