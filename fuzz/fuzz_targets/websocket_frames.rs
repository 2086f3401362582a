//! Checks `switchboard::protocol::properties::websocket_frames` on each input.
#![no_main]

libfuzzer_sys::fuzz_target!(
    |input: &[u8]| switchboard::protocol::properties::websocket_frames(input)
);
