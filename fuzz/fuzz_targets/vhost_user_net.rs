#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| net_backend::fuzz_harness::vhost_user::messages(data));
