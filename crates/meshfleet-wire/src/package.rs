//! Plugin packages: every message type other than 3-9, carried opaquely.

use alloc::string::{String, ToString};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::message::{parse_envelope, DecodeError};
use crate::{NodeId, Routing};

/// A plugin package (`from, routing, type, ...` in the library's `plugin.hpp`).
///
/// The mesh routes it by its `routing` key and hands it to whichever plugin registered its
/// type; the JSON text is kept exactly as received, so forwarding preserves every key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub(crate) ty: i64,
    routing: Routing,
    dest: NodeId,
    from: NodeId,
    text: String,
}

impl Package {
    pub(crate) fn from_parts(
        ty: i64,
        routing: Routing,
        dest: NodeId,
        from: NodeId,
        text: String,
    ) -> Self {
        Self {
            ty,
            routing,
            dest,
            from,
            text,
        }
    }

    /// Serializes a typed package (which must carry `type`, `from`, and `routing`, plus
    /// `dest` when routed SINGLE) and reads its header back.
    pub fn from_serialize<T: Serialize>(value: &T) -> Result<Self, DecodeError> {
        let text = serde_json::to_string(value).map_err(|e| DecodeError::Json(e.to_string()))?;
        Self::from_text(text)
    }

    /// Wraps JSON text, reading its header (`type`, `routing`, `dest`, `from`).
    pub fn from_text(text: String) -> Result<Self, DecodeError> {
        let (ty, routing, dest, from) = {
            let (env, _) = parse_envelope(&text)?;
            let ty = env.int("type").ok_or(DecodeError::NoType)?;
            let routing = env
                .int("routing")
                .map(Routing::from_code)
                .unwrap_or(Routing::for_type(ty));
            let u32_of = |k: &str| {
                env.get(k)
                    .and_then(|v| v.parse::<u32>().ok())
                    .map(NodeId)
                    .unwrap_or_default()
            };
            (ty, routing, u32_of("dest"), u32_of("from"))
        };
        Ok(Self {
            ty,
            routing,
            dest,
            from,
            text,
        })
    }

    /// The package type.
    pub fn ty(&self) -> i64 {
        self.ty
    }

    /// How it is routed.
    pub fn routing(&self) -> Routing {
        self.routing
    }

    /// Destination (0 if absent).
    pub fn dest(&self) -> NodeId {
        self.dest
    }

    /// Sender.
    pub fn from(&self) -> NodeId {
        self.from
    }

    /// The JSON text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Decodes the package into a typed struct.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        serde_json::from_str(&self.text).map_err(|e| DecodeError::Field {
            ty: self.ty,
            field: "package",
            reason: e.to_string(),
        })
    }
}
