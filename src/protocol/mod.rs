//! Pure wire codecs: bytes in, typed packets out, and back. No I/O, no tokio, no redis,
//! so each codec can be unit-tested and fuzzed on its own.

pub mod engineio;
pub mod socketio;
