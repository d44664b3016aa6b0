#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm::fuzz_harness::api_bodies(data));
