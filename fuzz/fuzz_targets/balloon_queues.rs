#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| balloon_backend::fuzz_harness::queues(data));
