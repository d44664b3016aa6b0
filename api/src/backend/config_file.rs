//! `--config FILE` for a backend: the file's JSON is the base, and every option also given on
//! the command line overrides the file's value (so `splitvisor-blk --config blk0.json --once`
//! works as one expects). The override is by name: a clap argument's id is its field's name,
//! which is also its JSON key (at the top level or inside `daemon`).

use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Why a backend's config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read the config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed config file {path}")]
    Malformed {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The configuration: `cli` alone without a file, else the file's with the options given on
/// the command line put over it.
pub fn load_with_file<T: Serialize + DeserializeOwned>(
    file: Option<&Path>,
    cli: T,
    matches: &clap::ArgMatches,
) -> Result<T, ConfigFileError> {
    let Some(path) = file else {
        return Ok(cli);
    };
    let malformed = |source| ConfigFileError::Malformed {
        path: path.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // check the file on its own first, so that its mistakes are reported as such
    let mut merged: Value =
        serde_json::to_value(serde_json::from_str::<T>(&text).map_err(malformed)?)
            .map_err(malformed)?;
    let given = serde_json::to_value(&cli).map_err(malformed)?;
    for id in matches.ids() {
        let id = id.as_str();
        if matches.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        // an option given on the command line also replaces the file's alternatives to it
        for other in EXCLUSIVE
            .iter()
            .filter(|group| group.contains(&id))
            .flat_map(|group| group.iter().filter(|o| **o != id))
        {
            if let Some(slot) = find_mut(&mut merged, other) {
                *slot = Value::Null;
            }
        }
        if let (Some(slot), Some(value)) = (find_mut(&mut merged, id), find(&given, id)) {
            *slot = value.clone();
        } else if let (Value::Object(top), Some(value)) = (&mut merged, find(&given, id)) {
            // absent from the file's serialization (an unset optional): set it where `cli` has it
            if top_level(&given, id) {
                top.insert(id.to_string(), value.clone());
            } else if let Some(Value::Object(d)) = top.get_mut("daemon") {
                d.insert(id.to_string(), value.clone());
            }
        }
    }
    serde_json::from_value(merged).map_err(malformed)
}

/// Options of which one excludes the others (clap's `conflicts_with`), by id.
const EXCLUSIVE: &[&[&str]] = &[&["socket", "socket_fd"], &["tap", "create_tap"]];

fn top_level(v: &Value, key: &str) -> bool {
    v.as_object().is_some_and(|o| o.contains_key(key))
}

/// `key` at the top level of an object or one level down.
fn find<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let o = v.as_object()?;
    o.get(key).or_else(|| {
        o.values()
            .filter_map(Value::as_object)
            .find_map(|n| n.get(key))
    })
}

fn find_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    let o = v.as_object_mut()?;
    if o.contains_key(key) {
        return o.get_mut(key);
    }
    o.values_mut()
        .filter_map(Value::as_object_mut)
        .find_map(|n| n.get_mut(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::blk::{BlkBackendConfig, ImageFormat};
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser)]
    struct Args {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        options: BlkBackendConfig,
    }

    fn load(argv: &[&str], file_text: &str) -> Result<BlkBackendConfig, ConfigFileError> {
        let dir = std::env::temp_dir().join(format!("sv-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = dir.join(format!("c{n}.json"));
        std::fs::write(&file, file_text).unwrap();
        let mut full = vec!["x", "--config", file.to_str().unwrap()];
        full.extend_from_slice(argv);
        let matches = Args::command().get_matches_from(full);
        let args = Args::from_arg_matches(&matches).unwrap();
        let r = load_with_file(args.config.as_deref(), args.options, &matches);
        let _ = std::fs::remove_file(&file);
        r
    }

    #[test]
    fn the_command_line_overrides_the_file() {
        let file = r#"{"image": "/a.img", "format": "raw", "queues": 2,
                       "daemon": {"socket": "/s.sock", "sched": "other"}}"#;
        let c = load(&[], file).unwrap();
        assert_eq!((c.queues, c.format), (2, ImageFormat::Raw));
        assert_eq!(c.daemon.socket, Some("/s.sock".into()));
        let c = load(
            &[
                "--queues",
                "4",
                "--once",
                "--image",
                "/b.img",
                "--pidfile",
                "/p",
            ],
            file,
        )
        .unwrap();
        assert_eq!(c.queues, 4);
        assert!(c.daemon.once);
        assert_eq!(c.image, Some("/b.img".into()));
        assert_eq!(c.daemon.pidfile, Some("/p".into()));
        // what the command line did not give stays the file's, defaults included
        assert_eq!(c.format, ImageFormat::Raw);
        assert_eq!(c.daemon.sched, crate::backend::SchedPolicy::Other);
    }

    #[test]
    fn an_option_replaces_the_files_alternative_to_it() {
        let file = r#"{"image": "/a.img", "daemon": {"socket_fd": 3}}"#;
        let c = load(&["--socket", "/s.sock"], file).unwrap();
        assert_eq!(c.daemon.socket, Some("/s.sock".into()));
        assert_eq!(c.daemon.socket_fd, None);
    }

    #[test]
    fn a_bad_file_is_named() {
        let err = load(&[], r#"{"image": "/a", "queus": 2}"#).unwrap_err();
        let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(
            text.contains("malformed config file") && text.contains("queus"),
            "{text}"
        );
        let matches = Args::command().get_matches_from(["x"]);
        let missing = load_with_file(
            Some(Path::new("/nonexistent/blk.json")),
            BlkBackendConfig::default(),
            &matches,
        );
        assert!(matches!(missing, Err(ConfigFileError::Read { .. })));
    }
}
