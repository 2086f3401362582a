//! Pure wire codecs: bytes in, typed packets out, and back. No I/O, no tokio, no redis,
//! so each codec can be unit-tested and fuzzed on its own.

pub mod engineio;
pub mod json;
pub mod socketio;

/// Appends a string as a JSON string literal.
fn write_json_str(out: &mut String, value: &str) {
    // Serialising a &str cannot fail.
    out.push_str(&serde_json::to_string(value).unwrap_or_default());
}
