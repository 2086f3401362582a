//! Checks `switchboard::transport::properties::http_head` on each input.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| switchboard::transport::properties::http_head(input));
