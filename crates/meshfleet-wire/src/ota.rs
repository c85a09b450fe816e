//! The library's OTA packages (types 10, 11, 12; PROTOCOL.md §4.3, quirk Q11).
//!
//! Keys are declared in the exact order the Alteriom fork serializes them, so encoding
//! reproduces its bytes. `broadcasted` is `None` for painlessMesh v1.4.1, which omits it.

use alloc::string::String;
use serde::{Deserialize, Serialize};

use crate::types;

/// Announce (10), broadcast by a node offering firmware: "I have `md5` for `role`/`hardware`
/// in `noPart` parts".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// Sender.
    pub from: u32,
    /// Always 2 (BROADCAST).
    pub routing: i64,
    /// Always 10.
    #[serde(rename = "type")]
    pub ty: i64,
    /// MD5 of the whole firmware image, lowercase hex.
    pub md5: String,
    /// "ESP32" or "ESP8266".
    pub hardware: String,
    /// Which nodes the firmware is for.
    pub role: String,
    /// Install even if the md5 equals the running firmware's.
    #[serde(default, skip_serializing_if = "is_false")]
    pub forced: bool,
    /// Number of parts.
    #[serde(rename = "noPart")]
    pub no_part: u32,
    /// Data parts are broadcast (Alteriom); absent in v1.4.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcasted: Option<bool>,
    /// The Alteriom "compressed" flag (it never compressed anything).
    #[serde(default, skip_serializing_if = "is_false")]
    pub compressed: bool,
}

/// DataRequest (11), sent by a receiver to the announcer: "send me part `partNo`".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataRequest {
    /// Requesting node.
    pub from: u32,
    /// Always 1 (SINGLE).
    pub routing: i64,
    /// Always 11.
    #[serde(rename = "type")]
    pub ty: i64,
    /// As announced.
    pub md5: String,
    /// As announced.
    pub hardware: String,
    /// As announced.
    pub role: String,
    /// As announced.
    #[serde(default, skip_serializing_if = "is_false")]
    pub forced: bool,
    /// As announced.
    #[serde(rename = "noPart")]
    pub no_part: u32,
    /// As announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcasted: Option<bool>,
    /// As announced.
    #[serde(default, skip_serializing_if = "is_false")]
    pub compressed: bool,
    /// The announcer.
    pub dest: u32,
    /// 0-based part number.
    #[serde(rename = "partNo")]
    pub part_no: u32,
}

/// Data (12): one part, base64 text of the raw image bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Data {
    /// The sender of the firmware.
    pub from: u32,
    /// 1 (SINGLE), or 2 when `broadcasted`.
    pub routing: i64,
    /// Always 12.
    #[serde(rename = "type")]
    pub ty: i64,
    /// As announced.
    pub md5: String,
    /// As announced.
    pub hardware: String,
    /// As announced.
    pub role: String,
    /// As announced.
    #[serde(default, skip_serializing_if = "is_false")]
    pub forced: bool,
    /// As announced.
    #[serde(rename = "noPart")]
    pub no_part: u32,
    /// As announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcasted: Option<bool>,
    /// As announced.
    #[serde(default, skip_serializing_if = "is_false")]
    pub compressed: bool,
    /// The requester.
    pub dest: u32,
    /// 0-based part number.
    #[serde(rename = "partNo")]
    pub part_no: u32,
    /// Base64 (standard alphabet, padded) of the part's bytes.
    pub data: String,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_false(b: &bool) -> bool {
    !*b
}

impl Announce {
    /// The request for `part_no` that a receiver `me` sends back (`DataRequest::replyTo`).
    pub fn request(&self, me: u32, part_no: u32) -> DataRequest {
        DataRequest {
            from: me,
            routing: 1,
            ty: types::OTA_DATA_REQUEST,
            md5: self.md5.clone(),
            hardware: self.hardware.clone(),
            role: self.role.clone(),
            forced: self.forced,
            no_part: self.no_part,
            broadcasted: self.broadcasted,
            compressed: self.compressed,
            dest: self.from,
            part_no,
        }
    }
}

impl DataRequest {
    /// The answer to this request carrying `data` (`Data::replyTo`); routing 2 when broadcasted.
    pub fn reply(&self, data: String) -> Data {
        Data {
            from: self.dest,
            routing: if self.broadcasted == Some(true) { 2 } else { 1 },
            ty: types::OTA_DATA,
            md5: self.md5.clone(),
            hardware: self.hardware.clone(),
            role: self.role.clone(),
            forced: self.forced,
            no_part: self.no_part,
            broadcasted: self.broadcasted,
            compressed: self.compressed,
            dest: self.from,
            part_no: self.part_no,
            data,
        }
    }
}
