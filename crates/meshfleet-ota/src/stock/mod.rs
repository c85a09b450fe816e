//! Stock painlessMesh OTA (package types 10 Announce, 11 DataRequest, 12 Data).
//!
//! The flow (PROTOCOL.md §4.3, quirks Q11, Q12, Q14; Alteriom `ota.hpp`): a sender broadcasts
//! an Announce `{md5, role, hardware, noPart}` once at start and then every 60 s, 60 times.
//! A node whose role and hardware match and whose running MD5 differs asks the announcer for
//! part 0 (DataRequest, SINGLE), writes each Data part it gets and asks for the next; after
//! the last part (`partNo == noPart - 1`) it checks the MD5 of the whole image and installs
//! it. A request is repeated every 30 s, 10 times, then abandoned until the next announce.
//!
//! Alteriom's `broadcasted` mode: only the root requests, Data goes out as BROADCAST and
//! every receiver writes the parts in order; a receiver that sees a part out of sequence
//! drops out of broadcast mode and requests the missing parts by unicast ("unicast after a
//! gap").

#[allow(unused_imports)]
use crate::prelude::*;

mod receiver;
mod sender;

pub use receiver::{StockReceiver, StockReceiverConfig, DEFAULT_MAX_STOCK_IMAGE};
pub use sender::{NodeProgress, StockSender, StockSenderConfig, StockSenderStats};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use md5::{Digest as _, Md5};
use meshfleet_wire::ota::Announce;
use meshfleet_wire::types;

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// MD5 of `data` as lowercase hex (the form stock nodes announce and check).
pub fn md5_hex(data: &[u8]) -> String {
    hex(&Md5::digest(data))
}

/// How the sender cuts the image into parts and which keys it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StockStyle {
    /// Alteriom painlessMesh 1.10 (`ota::addSendPackageCallback`): the *raw* image is cut into
    /// `part_size`-byte parts (1024 by default) and each is base64-encoded (1368 chars).
    /// Packages carry `"broadcasted"`; with `broadcasted: true` the Announce asks receivers to
    /// let the root lead and Data goes out as BROADCAST.
    Alteriom {
        /// Raw bytes per part (the library's `otaPartSize`).
        part_size: u32,
        /// Announce with `"broadcasted":true`.
        broadcasted: bool,
    },
    /// painlessMeshBoost 0.9.7 / painlessMesh v1.4.1: the whole image is base64-encoded and
    /// the *text* is cut into 1024-char parts, `noPart = ceil(b64len / 1024)`. Because
    /// 1024 % 4 == 0 each text part is exactly the base64 of 768 raw bytes, so parts are
    /// served as `base64(image[768 * n ..])`. No `"broadcasted"` key anywhere.
    V141,
}

impl StockStyle {
    /// The Alteriom default: 1024 raw bytes per part, unicast.
    pub const ALTERIOM: Self = Self::Alteriom {
        part_size: 1024,
        broadcasted: false,
    };

    /// Base64 characters per part in the v1.4.1 style.
    pub const V141_TEXT_PART: u32 = 1024;

    /// Raw image bytes per part.
    pub fn raw_part_size(self) -> u32 {
        match self {
            Self::Alteriom { part_size, .. } => part_size.max(1),
            // 1024 base64 chars = 768 raw bytes (1024 is a multiple of 4: no padding inside).
            Self::V141 => Self::V141_TEXT_PART / 4 * 3,
        }
    }
}

/// Why an offer could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OfferError {
    /// The image is empty.
    #[error("the firmware image is empty")]
    EmptyImage,
    /// More parts than a u32 can count.
    #[error("the firmware image is too large for the stock OTA part numbering")]
    TooLarge,
    /// A part size of 0 or one whose base64 would not fit the library's 65,535-char strings.
    #[error("part size {0} is out of range 1..=49152")]
    PartSize(u32),
    /// The node already has a plugin for the sending plugins' package types.
    #[error("{0}")]
    Plugin(meshfleet_mesh::AddPluginError),
}

impl From<meshfleet_mesh::AddPluginError> for OfferError {
    fn from(e: meshfleet_mesh::AddPluginError) -> Self {
        Self::Plugin(e)
    }
}

/// Firmware offered to stock nodes: the raw image and how to describe and cut it.
#[derive(Clone, Debug)]
pub struct StockOffer {
    image: Vec<u8>,
    md5: String,
    role: String,
    hardware: String,
    forced: bool,
    style: StockStyle,
    no_part: u32,
}

impl StockOffer {
    /// An offer of the raw `image` for nodes of `role` on `hardware` ("ESP32", "ESP8266").
    pub fn new(
        image: Vec<u8>,
        role: impl Into<String>,
        hardware: impl Into<String>,
        style: StockStyle,
    ) -> Result<Self, OfferError> {
        if image.is_empty() {
            return Err(OfferError::EmptyImage);
        }
        if let StockStyle::Alteriom { part_size, .. } = style {
            // ArduinoJson refuses strings over 65,535 chars: 49,152 raw bytes is 65,536 chars
            // of base64, so the largest usable part is a little under that.
            if part_size == 0 || part_size > 49_149 {
                return Err(OfferError::PartSize(part_size));
            }
        }
        let part = u64::from(style.raw_part_size());
        let no_part =
            u32::try_from((image.len() as u64).div_ceil(part)).map_err(|_| OfferError::TooLarge)?;
        Ok(Self {
            md5: md5_hex(&image),
            image,
            role: role.into(),
            hardware: hardware.into(),
            forced: false,
            style,
            no_part,
        })
    }

    /// Marks the offer `forced`: nodes install it even if they already run this MD5.
    #[must_use]
    pub fn forced(mut self, forced: bool) -> Self {
        self.forced = forced;
        self
    }

    /// MD5 of the image, lowercase hex (the standard `md5sum` form, never Q12's swapped one).
    pub fn md5(&self) -> &str {
        &self.md5
    }

    /// Target role.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// Target hardware.
    pub fn hardware(&self) -> &str {
        &self.hardware
    }

    /// The style.
    pub fn style(&self) -> StockStyle {
        self.style
    }

    /// Number of parts (`noPart`).
    pub fn no_part(&self) -> u32 {
        self.no_part
    }

    /// The raw image.
    pub fn image(&self) -> &[u8] {
        &self.image
    }

    /// The raw bytes of part `part`, or `None` past the last part (part numbers come from
    /// the network).
    pub fn part(&self, part: u32) -> Option<&[u8]> {
        let size = self.style.raw_part_size() as usize;
        let start = (part as usize).checked_mul(size)?;
        if part >= self.no_part || start >= self.image.len() {
            return None;
        }
        let end = start.saturating_add(size).min(self.image.len());
        self.image.get(start..end)
    }

    /// The `data` value of part `part`: standard, padded base64.
    pub fn part_base64(&self, part: u32) -> Option<String> {
        self.part(part).map(|p| BASE64.encode(p))
    }

    /// The Announce this offer sends, from node `from`.
    pub fn announce(&self, from: u32) -> Announce {
        let broadcasted = match self.style {
            StockStyle::Alteriom { broadcasted, .. } => Some(broadcasted),
            StockStyle::V141 => None,
        };
        Announce {
            from,
            routing: 2,
            ty: types::OTA_ANNOUNCE,
            md5: self.md5.clone(),
            hardware: self.hardware.clone(),
            role: self.role.clone(),
            forced: self.forced,
            no_part: self.no_part,
            broadcasted,
            compressed: false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn v141_parts_equal_cut_base64_text() {
        for len in [1usize, 2, 3, 767, 768, 769, 3000, 4097] {
            let image: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let offer = StockOffer::new(image.clone(), "r", "ESP32", StockStyle::V141).unwrap();
            let text = BASE64.encode(&image);
            let parts: Vec<&str> = text
                .as_bytes()
                .chunks(1024)
                .map(|c| core::str::from_utf8(c).unwrap())
                .collect();
            assert_eq!(offer.no_part() as usize, parts.len(), "len {len}");
            for (i, p) in parts.iter().enumerate() {
                assert_eq!(offer.part_base64(i as u32).unwrap(), *p);
            }
            assert!(offer.part_base64(offer.no_part()).is_none());
        }
    }

    #[test]
    fn alteriom_parts() {
        let offer = StockOffer::new(vec![1; 2500], "r", "ESP32", StockStyle::ALTERIOM).unwrap();
        assert_eq!(offer.no_part(), 3);
        assert_eq!(offer.part(2).unwrap().len(), 452);
        assert_eq!(offer.part_base64(0).unwrap().len(), 1368);
        assert!(offer.part(3).is_none());
        assert!(offer.part(u32::MAX).is_none());
        assert_eq!(
            StockOffer::new(vec![], "r", "h", StockStyle::V141).unwrap_err(),
            OfferError::EmptyImage
        );
    }
}
