//! The nested-KVM sandbox itself: L1 has a working /dev/kvm, our kvm-ioctls smoke guest runs
//! there with memfd-backed memory and reports the expected exits, and the job's exit status
//! and files come back to the host.

use integration_tests::Sandbox;

#[test]
fn kvm_smoke_guest_runs_inside_the_sandbox() {
    let sandbox = Sandbox::new().expect("sandbox setup");
    let out = sandbox
        .run("sv-kvm-smoke > \"$JOB/smoke.txt\"; echo \"smoke-status=$?\" >> \"$JOB/smoke.txt\"; exit 42")
        .expect("sandbox run");
    let smoke = out.file("smoke.txt").expect("the job wrote smoke.txt");
    assert!(smoke.contains("exit: MmioWrite(65536, [66])"), "{smoke}");
    assert!(smoke.contains("exit: MmioRead(65552, 1)"), "{smoke}");
    assert!(smoke.contains("KVM-SMOKE OK 6 exits"), "{smoke}");
    assert!(smoke.contains("smoke-status=0"), "{smoke}");
    assert_eq!(out.status, 42, "the job's exit status must come back");
    if sandbox.kit().root().exists()
        && integration_tests::Mode::from_env() == integration_tests::Mode::Sandbox
    {
        assert!(
            out.lines_with("SANDBOX-L1-READY")
                .any(|l| l.ends_with("kvm=yes")),
            "L1 must have /dev/kvm"
        );
    }
}
