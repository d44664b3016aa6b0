//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) and every harness's built-in
//! seeds through the same harness functions the cargo-fuzz targets call, as ordinary tests on
//! the stable toolchain: an input that once crashed a target and was fixed stays fixed.
//!
//! `cargo test -p integration-tests --test fuzz_corpora -- --ignored write_seeds` (re)writes
//! the built-in seeds into the corpus folders as `seed-<name>` files.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

type Harness = fn(&[u8]);
type Seeds = fn() -> Vec<(String, Vec<u8>)>;

/// Every fuzz target: its name (the corpus folder), its harness and its seeds.
const TARGETS: &[(&str, Harness, Seeds)] = &[
    (
        "blk_request",
        blk_backend::fuzz_harness::request,
        blk_backend::fuzz_harness::request_seeds,
    ),
    (
        "qcow2_image",
        blk_backend::fuzz_harness::qcow2_image,
        blk_backend::fuzz_harness::qcow2_image_seeds,
    ),
    (
        "net_queues",
        net_backend::fuzz_harness::queues,
        net_backend::fuzz_harness::queues_seeds,
    ),
    (
        "balloon_queues",
        balloon_backend::fuzz_harness::queues,
        balloon_backend::fuzz_harness::queues_seeds,
    ),
    (
        "vhost_user_blk",
        blk_backend::fuzz_harness::vhost_user::messages,
        blk_backend::fuzz_harness::vhost_user::messages_seeds,
    ),
    (
        "vhost_user_net",
        net_backend::fuzz_harness::vhost_user::messages,
        net_backend::fuzz_harness::vhost_user::messages_seeds,
    ),
    (
        "vhost_user_balloon",
        balloon_backend::fuzz_harness::vhost_user::messages,
        balloon_backend::fuzz_harness::vhost_user::messages_seeds,
    ),
    (
        "virtio_pci",
        vmm::fuzz_harness::virtio_pci,
        vmm::fuzz_harness::virtio_pci_seeds,
    ),
    (
        "vm_config",
        api::fuzz_harness::vm_config,
        api::fuzz_harness::vm_config_seeds,
    ),
    (
        "domain_json",
        svctl::fuzz_harness::domain_json,
        svctl::fuzz_harness::domain_json_seeds,
    ),
    (
        "api_bodies",
        vmm::fuzz_harness::api_bodies,
        vmm::fuzz_harness::api_bodies_seeds,
    ),
];

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn target(name: &str) -> (Harness, Seeds) {
    let &(_, harness, seeds) = TARGETS
        .iter()
        .find(|(n, ..)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"));
    (harness, seeds)
}

/// Every input of `name`'s committed corpus and seeds through its harness; fails naming each
/// input that panicked.
fn replay(name: &str) {
    let (harness, seeds) = target(name);
    let dir = corpus_dir(name);
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no corpus for {name} at {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a corpus entry").path();
            let bytes = std::fs::read(&path).expect("a readable corpus file");
            (path.display().to_string(), bytes)
        })
        .collect();
    assert!(!inputs.is_empty(), "the corpus {} is empty", dir.display());
    inputs.extend(seeds().into_iter().map(|(n, b)| (format!("seed {n}"), b)));
    let failed: Vec<String> = inputs
        .iter()
        .filter(|(_, bytes)| catch_unwind(AssertUnwindSafe(|| harness(bytes))).is_err())
        .map(|(n, _)| n.clone())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} inputs of {name} panicked: {failed:#?}",
        failed.len(),
        inputs.len()
    );
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { replay(stringify!($name)); })*
        /// Every target has a test here (a target added without one fails).
        #[test]
        fn every_target_is_replayed() {
            let tested = [$(stringify!($name)),*];
            for (name, ..) in TARGETS {
                assert!(tested.contains(name), "fuzz target {name} is not replayed");
            }
            let targets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
            for entry in std::fs::read_dir(targets).expect("fuzz/fuzz_targets") {
                let file = entry.expect("an entry").file_name();
                let stem = file.to_string_lossy().trim_end_matches(".rs").to_string();
                assert!(tested.contains(&stem.as_str()), "fuzz target {stem} has no corpus test");
            }
        }
    };
}

replay_tests!(
    blk_request,
    qcow2_image,
    net_queues,
    balloon_queues,
    vhost_user_blk,
    vhost_user_net,
    vhost_user_balloon,
    virtio_pci,
    vm_config,
    domain_json,
    api_bodies,
);

#[test]
#[ignore = "writes the seeds into fuzz/corpus; run by hand"]
fn write_seeds() {
    for (name, _, seeds) in TARGETS {
        let dir = corpus_dir(name);
        std::fs::create_dir_all(&dir).expect("a corpus folder");
        for (seed, bytes) in seeds() {
            std::fs::write(dir.join(format!("seed-{seed}")), bytes).expect("a seed file");
        }
    }
}
