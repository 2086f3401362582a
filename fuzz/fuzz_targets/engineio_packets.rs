//! Checks `switchboard::protocol::properties::engineio_packets` on each input.
#![no_main]

libfuzzer_sys::fuzz_target!(
    |input: &[u8]| switchboard::protocol::properties::engineio_packets(input)
);
