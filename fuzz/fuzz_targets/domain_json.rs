#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| svctl::fuzz_harness::domain_json(data));
