//! Checks `switchboard::protocol::properties::json_frames` on each input.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| switchboard::protocol::properties::json_frames(input));
