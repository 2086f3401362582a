//! Random ids: Engine.IO session ids, socket ids, instance and delivery ids.

use std::sync::Arc;

use base64::Engine;

/// A random id: 120 bits, URL-safe.
pub fn random_id() -> Result<Arc<str>, getrandom::Error> {
    let mut bytes = [0u8; 15];
    getrandom::fill(&mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(bytes)
        .into())
}
