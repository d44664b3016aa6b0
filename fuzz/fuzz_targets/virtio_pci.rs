#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm::fuzz_harness::virtio_pci(data));
