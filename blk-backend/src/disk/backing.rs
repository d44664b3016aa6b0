//! Which backing files an image may name: the guard against an image (crafted, or written by
//! a guest into its own disk) that names a host file it was never given — QEMU's
//! CVE-2008-2004 pattern.
//!
//! The rules (docs/security.md):
//! - a backing chain is followed only from an image whose format was given (`--format
//!   qcow2`), never from a probed one;
//! - each backing file's format must be named in its parent's header (the backing-format
//!   extension, `qemu-img create -F`): backing formats are never probed (libvirt's rule too);
//! - the name may not contain a `..` component, and the file it resolves to (symbolic links
//!   followed) must lie inside one of the allowed directories: `--backing-dir DIR`
//!   (repeatable), by default the top image's own directory.

use std::io;
use std::path::{Component, Path, PathBuf};

use super::Format;

/// Why a backing file named in an image header is not opened.
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    #[error(
        "the image names a backing file ({name:?}) but its format was probed: give \
         --format qcow2 to open its backing chain (a probed image may name any host file)"
    )]
    ProbedImage { name: String },
    #[error(
        "the header names no format for the backing file {name:?}: set it with \
         `qemu-img rebase -u -F raw|qcow2` (backing formats are never probed)"
    )]
    NoFormat { name: String },
    #[error("the backing file {name:?} is in format {format:?}; only raw and qcow2 are served")]
    UnsupportedFormat { name: String, format: String },
    #[error("the backing file name {name:?} contains a '..' component, which is refused")]
    ParentComponent { name: String },
    #[error("cannot find the backing file {path}")]
    Missing {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the backing file {name:?} resolves to {resolved}, outside the directories backing \
         files may come from ({allowed}); allow its directory with --backing-dir"
    )]
    Outside {
        name: String,
        resolved: PathBuf,
        allowed: String,
    },
}

/// The directories backing files may come from, canonical: `given`, or when none is given
/// the directory of `image`.
pub fn allowed_dirs(image: &Path, given: &[PathBuf]) -> io::Result<Vec<PathBuf>> {
    if given.is_empty() {
        let dir = match image.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        return Ok(vec![dir.canonicalize()?]);
    }
    given.iter().map(|d| d.canonicalize()).collect()
}

/// The format to open the backing file `name` with: the one its parent's header names.
/// `parent` is the format the parent image was opened with as asked for (`Auto`: probed).
pub fn format(name: &str, named: Option<&str>, parent: Format) -> Result<Format, BackingError> {
    if parent == Format::Auto {
        return Err(BackingError::ProbedImage { name: name.into() });
    }
    match named {
        Some("raw") => Ok(Format::Raw),
        Some("qcow2") => Ok(Format::Qcow2),
        Some(other) => Err(BackingError::UnsupportedFormat {
            name: name.into(),
            format: other.into(),
        }),
        None => Err(BackingError::NoFormat { name: name.into() }),
    }
}

/// The canonical path of the backing file `name` that `image`'s header names (relative names
/// are relative to `image`'s directory), checked to lie inside one of `allowed` (canonical).
pub fn resolve(image: &Path, name: &str, allowed: &[PathBuf]) -> Result<PathBuf, BackingError> {
    let named = Path::new(name);
    if named.components().any(|c| c == Component::ParentDir) {
        return Err(BackingError::ParentComponent { name: name.into() });
    }
    let path = image.parent().unwrap_or(Path::new(".")).join(named);
    let resolved = path
        .canonicalize()
        .map_err(|source| BackingError::Missing { path, source })?;
    if allowed.iter().any(|dir| resolved.starts_with(dir)) {
        return Ok(resolved);
    }
    Err(BackingError::Outside {
        name: name.into(),
        resolved,
        allowed: allowed
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sv-backing-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("images/sub")).unwrap();
        std::fs::create_dir_all(dir.join("other")).unwrap();
        for f in ["images/base.raw", "images/sub/deep.raw", "other/secret"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        dir.canonicalize().unwrap()
    }

    #[test]
    fn names_inside_the_allowed_directories_resolve() {
        let dir = scratch("inside");
        let image = dir.join("images/top.qcow2");
        let allowed = allowed_dirs(&image, &[]).unwrap();
        assert_eq!(allowed, vec![dir.join("images")]);
        assert_eq!(
            resolve(&image, "base.raw", &allowed).unwrap(),
            dir.join("images/base.raw")
        );
        assert_eq!(
            resolve(&image, "sub/deep.raw", &allowed).unwrap(),
            dir.join("images/sub/deep.raw")
        );
        let absolute = dir.join("images/base.raw");
        assert_eq!(
            resolve(&image, absolute.to_str().unwrap(), &allowed).unwrap(),
            absolute
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn names_leaving_the_allowed_directories_are_refused() {
        let dir = scratch("outside");
        let image = dir.join("images/top.qcow2");
        let allowed = allowed_dirs(&image, &[]).unwrap();
        let err = resolve(&image, "/etc/passwd", &allowed).unwrap_err();
        assert!(matches!(err, BackingError::Outside { .. }), "{err}");
        assert!(err.to_string().contains("--backing-dir"), "{err}");
        let err = resolve(&image, "../other/secret", &allowed).unwrap_err();
        assert!(matches!(err, BackingError::ParentComponent { .. }), "{err}");
        let err = resolve(&image, "sub/../base.raw", &allowed).unwrap_err();
        assert!(matches!(err, BackingError::ParentComponent { .. }), "{err}");
        // a symbolic link inside pointing outside is judged by where it leads
        std::os::unix::fs::symlink(dir.join("other/secret"), dir.join("images/link")).unwrap();
        let err = resolve(&image, "link", &allowed).unwrap_err();
        assert!(matches!(err, BackingError::Outside { .. }), "{err}");
        let err = resolve(&image, "absent.raw", &allowed).unwrap_err();
        assert!(matches!(err, BackingError::Missing { .. }), "{err}");
        // allowed by name
        let wider = allowed_dirs(&image, &[dir.join("images"), dir.join("other")]).unwrap();
        assert_eq!(
            resolve(&image, "link", &wider).unwrap(),
            dir.join("other/secret")
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn backing_formats_must_be_named_under_an_explicit_parent() {
        assert!(matches!(
            format("b", Some("raw"), Format::Auto),
            Err(BackingError::ProbedImage { .. })
        ));
        assert!(matches!(
            format("b", None, Format::Qcow2),
            Err(BackingError::NoFormat { .. })
        ));
        assert!(matches!(
            format("b", Some("vmdk"), Format::Qcow2),
            Err(BackingError::UnsupportedFormat { .. })
        ));
        assert_eq!(
            format("b", Some("raw"), Format::Qcow2).unwrap(),
            Format::Raw
        );
        assert_eq!(
            format("b", Some("qcow2"), Format::Qcow2).unwrap(),
            Format::Qcow2
        );
    }
}
