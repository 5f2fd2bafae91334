#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    keel_node::security::testing::sasl_exchange(data);
});
