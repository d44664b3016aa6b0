#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| api::fuzz_harness::vm_config(data));
