#![no_main]
libfuzzer_sys::fuzz_target!(|ops: Vec<keel_core::log::testing::LogOp>| keel_core::log::testing::run(&ops));
