//! For the vhost-user harnesses' unit tests (this crate's and each backend's): what every
//! backend's seeds and mutated inputs must do to a connection and to the process, and the
//! tests every backend's harness has alike
//! ([`vhost_user_harness_tests!`](crate::vhost_user_harness_tests)).

use std::io;
use std::sync::{Mutex, MutexGuard};

use vhost::vhost_user::message::FrontendReq;

use super::test_inputs::is_seed_name;
use super::{decode, Device, Footprint, Outcome, Seeds};

/// Tests that count threads and descriptors run one at a time: each holds this while it runs.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every seed runs, its whole stream fitted in the socket before the handler read it, and the
/// broken ones (`broken-*`) end the connection before the end of the stream, the others not.
pub fn check_seeds_run(
    seeds: &[(String, Vec<u8>)],
    mut run: impl FnMut(&[u8]) -> io::Result<Outcome>,
) {
    assert!(seeds.len() > 30, "{} seeds", seeds.len());
    for (name, data) in seeds {
        assert!(is_seed_name(name), "{name}");
        let out = run(data).unwrap();
        assert!(out.sent >= decode(data).messages.len(), "{name}");
        assert_eq!(
            out.completed,
            !name.starts_with("broken-"),
            "{name}: {out:?}"
        );
    }
}

/// `inputs` (run once each after a first one, so that what the process makes once exists)
/// leave no thread and no descriptor behind; says how many exit events the driver closed.
pub fn check_nothing_left_behind(
    what: &str,
    inputs: &[Vec<u8>],
    mut run: impl FnMut(&[u8]) -> io::Result<Outcome>,
) -> usize {
    let _ = run(&inputs[0]);
    let before = Footprint::now();
    let started = std::time::Instant::now();
    let mut swept = 0;
    for data in inputs {
        swept += run(data).unwrap().swept;
    }
    let elapsed = started.elapsed();
    let after = before.settled_after();
    eprintln!(
        "{what}, {} inputs in {elapsed:?}: {before:?} -> {after:?}, {swept} exit events closed",
        inputs.len()
    );
    // other tests of the binary may run meanwhile: a little slack, far below one per input
    assert!(
        after.threads <= before.threads + 4,
        "{before:?} -> {after:?}"
    );
    assert!(after.fds <= before.fds + 8, "{before:?} -> {after:?}");
    swept
}

/// The vmm's start and stop of `device` (seed `name`) went through: to the end of the stream,
/// the features and the queue count the device offers, every ring stopped. Returns the config
/// space the vmm read.
pub fn check_vmm_start<'a>(name: &str, out: &'a Outcome, device: &Device) -> &'a [u8] {
    assert!(out.completed && out.ended.is_none(), "{name}: {out:?}");
    let features = out.replies_to(FrontendReq::GET_FEATURES)[0].u64();
    assert_eq!(features, Some(device.features), "{name}");
    let queues = out.replies_to(FrontendReq::GET_QUEUE_NUM)[0].u64();
    assert_eq!(queues, Some(u64::from(device.queues)), "{name}");
    let bases = out.replies_to(FrontendReq::GET_VRING_BASE);
    assert_eq!(
        bases.len(),
        device.queues as usize,
        "{name}: {:?}",
        out.replies
    );
    &out.replies_to(FrontendReq::GET_CONFIG)[0].body[12..]
}

/// The seeds of the vmm's start and stop (`vmm-start-stop*`).
pub fn vmm_start_seeds(seeds: Seeds) -> impl Iterator<Item = (String, Vec<u8>)> {
    seeds
        .into_iter()
        .filter(|(name, _)| name.starts_with("vmm-start-stop"))
}

/// The tests every backend's vhost-user harness has alike, for its `tests` module: its seeds
/// (from `$seeds()`) through `$run` with [`check_seeds_run`], and 200 mutations of them with
/// [`check_nothing_left_behind`] (`$what` names the backend in its report).
#[macro_export]
macro_rules! vhost_user_harness_tests {
    ($what:literal, $seeds:path, $run:path) => {
        #[test]
        fn every_seed_runs_and_only_the_broken_ones_end_early() {
            use $crate::fuzz_harness::backend_checks as checks;
            let _serial = checks::serial();
            checks::check_seeds_run(&$seeds(), $run);
        }

        #[test]
        fn two_hundred_inputs_leave_no_thread_and_no_descriptor_behind() {
            use $crate::fuzz_harness::backend_checks as checks;
            let _serial = checks::serial();
            let inputs = $crate::fuzz_harness::mutations(&$seeds(), 200);
            checks::check_nothing_left_behind($what, &inputs, $run);
        }
    };
}
