//! How values become payload bytes.
//!
//! JSON is the default: readable in `redis-cli`, tolerant of added optional
//! fields, and what most services already derive. The trait is generic over
//! serde so another format (a binary one for size or speed) plugs in
//! without touching the envelope or the stores.

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::BoxError;

/// Serializes values into payload bytes and back.
pub trait Codec: Debug + Send + Sync + 'static {
    /// Appends the encoding of `value` to `out`.
    ///
    /// # Errors
    /// When the value cannot be represented (say, a map with non-string keys
    /// in JSON).
    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), BoxError>;

    /// Decodes a payload.
    ///
    /// # Errors
    /// When the bytes are not an encoding of `T`.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, BoxError>;
}

/// JSON through `serde_json`: the default codec.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct Json;

impl Codec for Json {
    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), BoxError> {
        serde_json::to_writer(out, value).map_err(Into::into)
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, BoxError> {
        serde_json::from_slice(bytes).map_err(Into::into)
    }
}
