//! Pure wire codecs: bytes in, typed packets out, and back. No I/O, no tokio, no redis,
//! so each codec can be unit-tested and fuzzed on its own.

pub mod engineio;
pub mod json;
#[cfg(any(test, fuzzing))]
pub mod properties;
pub mod socketio;
pub mod websocket;

/// Appends a string as a JSON string literal.
fn write_json_str(out: &mut String, value: &str) {
    // Serialising a &str cannot fail.
    out.push_str(&serde_json::to_string(value).unwrap_or_default());
}

/// An id given as a JSON string or number, as text (`7` and `"7"` are the same id).
pub fn id_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The id under `field` of a JSON object, as text.
pub fn id_field(data: &serde_json::value::RawValue, field: &str) -> Option<String> {
    let data: serde_json::Map<String, serde_json::Value> = serde_json::from_str(data.get()).ok()?;
    id_text(data.get(field)?)
}
