//! The snapshot's state file: a header, a table of named sections, then their bodies.
//!
//! ```text
//! magic "SVSNAPST" | format version u32 | section count u32
//! per section: name length u16 | name | section version u32 | body length u64 | body CRC32 u32
//! CRC32 of everything above
//! the bodies, in table order
//! ```
//!
//! All integers little-endian. Each section (a vCPU, the interrupt controllers, a device …)
//! carries its own version, so a later release can read an older section or refuse a newer
//! one by name; [`Sections::read`] checks the magic, the format version, the table's CRC and
//! every body's length and CRC before anything is used, so a damaged file is refused whole,
//! with the section that is wrong named.

use std::collections::BTreeMap;

/// The first bytes of every state file.
pub const MAGIC: [u8; 8] = *b"SVSNAPST";
/// The layout above. A reader refuses a newer one.
pub const FORMAT_VERSION: u32 = 1;
/// Bounds a reader holds a file to (a real snapshot has a few dozen sections).
const MAX_SECTIONS: u32 = 4096;
const MAX_NAME: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not a splitvisor snapshot (the state file does not start with {:?})", String::from_utf8_lossy(&MAGIC))]
    BadMagic,
    #[error("the snapshot's format version is {found}; this splitvisor reads up to {supported}")]
    NewerFormat { found: u32, supported: u32 },
    #[error("the state file is cut short (in {0})")]
    Truncated(String),
    #[error("the state file's section table is damaged (CRC mismatch)")]
    TableCrc,
    #[error("the state file has {0} sections, more than {MAX_SECTIONS}")]
    TooManySections(u32),
    #[error("a section name in the state file is not valid (empty, over {MAX_NAME} bytes, not UTF-8, or repeated)")]
    BadName,
    #[error("section {0} of the snapshot is damaged (CRC mismatch)")]
    SectionCrc(String),
    #[error("the snapshot has no section {0}")]
    Missing(String),
    #[error("section {name} of the snapshot has version {found}; this splitvisor reads up to {supported}")]
    NewerSection {
        name: String,
        found: u32,
        supported: u32,
    },
    #[error("the state file has {0} bytes after its last section")]
    TrailingBytes(usize),
}

/// One section: its version and body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Section {
    version: u32,
    body: Vec<u8>,
}

/// A state file's sections, by name (written in name order).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sections {
    sections: BTreeMap<String, Section>,
}

impl Sections {
    pub fn new() -> Sections {
        Sections::default()
    }

    /// Add section `name` (replacing one of that name).
    pub fn put(&mut self, name: &str, version: u32, body: Vec<u8>) {
        self.sections
            .insert(name.to_string(), Section { version, body });
    }

    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sections.keys().map(String::as_str)
    }

    /// Section `name`'s body, if this release reads its version (`supported` or older).
    pub fn get(&self, name: &str, supported: u32) -> Result<&[u8], FormatError> {
        let s = self
            .sections
            .get(name)
            .ok_or_else(|| FormatError::Missing(name.to_string()))?;
        if s.version > supported {
            return Err(FormatError::NewerSection {
                name: name.to_string(),
                found: s.version,
                supported,
            });
        }
        Ok(&s.body)
    }

    /// Section `name`'s version, if present.
    pub fn version(&self, name: &str) -> Option<u32> {
        self.sections.get(name).map(|s| s.version)
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.sections.len() as u32).to_le_bytes());
        for (name, s) in &self.sections {
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&s.version.to_le_bytes());
            out.extend_from_slice(&(s.body.len() as u64).to_le_bytes());
            out.extend_from_slice(&crc32fast::hash(&s.body).to_le_bytes());
        }
        let table_crc = crc32fast::hash(&out);
        out.extend_from_slice(&table_crc.to_le_bytes());
        for s in self.sections.values() {
            out.extend_from_slice(&s.body);
        }
        out
    }

    /// Parse and check a whole file: nothing is returned unless every part is intact.
    pub fn read(bytes: &[u8]) -> Result<Sections, FormatError> {
        let mut r = Cursor { bytes, at: 0 };
        if r.take(8, "the header")? != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = r.u32("the header")?;
        if version > FORMAT_VERSION {
            return Err(FormatError::NewerFormat {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let count = r.u32("the header")?;
        if count > MAX_SECTIONS {
            return Err(FormatError::TooManySections(count));
        }
        let mut table = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let len = usize::from(r.u16("the section table")?);
            let name = r.take(len, "the section table")?;
            let name = std::str::from_utf8(name)
                .ok()
                .filter(|n| !n.is_empty() && n.len() <= MAX_NAME)
                .ok_or(FormatError::BadName)?
                .to_string();
            let version = r.u32("the section table")?;
            let body_len = r.u64("the section table")?;
            let crc = r.u32("the section table")?;
            table.push((name, version, body_len, crc));
        }
        let table_end = r.at;
        let table_crc = r.u32("the section table")?;
        if crc32fast::hash(&bytes[..table_end]) != table_crc {
            return Err(FormatError::TableCrc);
        }
        let mut sections = BTreeMap::new();
        for (name, version, body_len, crc) in table {
            let len =
                usize::try_from(body_len).map_err(|_| FormatError::Truncated(name.clone()))?;
            let body = r.take(len, &name)?;
            if crc32fast::hash(body) != crc {
                return Err(FormatError::SectionCrc(name));
            }
            let section = Section {
                version,
                body: body.to_vec(),
            };
            if sections.insert(name, section).is_some() {
                return Err(FormatError::BadName);
            }
        }
        if r.at != bytes.len() {
            return Err(FormatError::TrailingBytes(bytes.len() - r.at));
        }
        Ok(Sections { sections })
    }
}

/// Reading a byte slice front to back; a read past its end names the part being read.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FormatError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| FormatError::Truncated(what.to_string()))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u16(&mut self, what: &str) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().unwrap_or_default(),
        ))
    }
    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().unwrap_or_default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sections {
        let mut s = Sections::new();
        s.put("vcpu/0", 1, b"registers".to_vec());
        s.put("vm", 2, b"irqchip".to_vec());
        s.put("empty", 1, Vec::new());
        s
    }

    #[test]
    fn a_file_reads_back_as_written() {
        let s = sample();
        let back = Sections::read(&s.to_bytes()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.get("vm", 2).unwrap(), b"irqchip");
        assert_eq!(back.version("vcpu/0"), Some(1));
        assert_eq!(back.names().collect::<Vec<_>>(), ["empty", "vcpu/0", "vm"]);
    }

    #[test]
    fn a_newer_section_or_a_missing_one_is_refused_by_name() {
        let s = sample();
        assert_eq!(
            s.get("vm", 1),
            Err(FormatError::NewerSection {
                name: "vm".into(),
                found: 2,
                supported: 1
            })
        );
        assert_eq!(s.get("net0", 1), Err(FormatError::Missing("net0".into())));
    }

    #[test]
    fn every_damaged_byte_is_caught() {
        let bytes = sample().to_bytes();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(
                Sections::read(&bad).is_err(),
                "byte {i} flipped went unnoticed"
            );
        }
        for len in 0..bytes.len() {
            assert!(Sections::read(&bytes[..len]).is_err(), "cut at {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Sections::read(&longer), Err(FormatError::TrailingBytes(1)));
    }

    #[test]
    fn other_files_and_newer_formats_are_named() {
        assert_eq!(
            Sections::read(b"not a snapshot at all"),
            Err(FormatError::BadMagic)
        );
        let mut bytes = sample().to_bytes();
        bytes[8] = 9;
        assert_eq!(
            Sections::read(&bytes),
            Err(FormatError::NewerFormat {
                found: 9,
                supported: FORMAT_VERSION
            })
        );
    }

    #[test]
    fn hostile_counts_and_lengths_allocate_nothing_large() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Sections::read(&bytes),
            Err(FormatError::TooManySections(u32::MAX))
        );
        // one section claiming an enormous body, with a valid table CRC
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&2u16.to_le_bytes());
        bytes.extend_from_slice(b"vm");
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        assert!(matches!(Sections::read(&bytes), Err(FormatError::Truncated(n)) if n == "vm"));
    }
}
