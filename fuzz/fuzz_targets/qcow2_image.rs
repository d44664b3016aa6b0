#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| blk_backend::fuzz_harness::qcow2_image(data));
