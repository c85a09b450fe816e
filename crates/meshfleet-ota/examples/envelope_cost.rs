//! The cost of the typed package envelope on the JSON CHUNK path, for callgrind.
//!
//! ```text
//! cargo build --release -p meshfleet-ota --example envelope_cost
//! valgrind --tool=callgrind target/release/examples/envelope_cost envelope 2000
//! valgrind --tool=callgrind target/release/examples/envelope_cost flat 2000
//! ```
//!
//! `envelope`: what a sender and a receiver do per JSON CHUNK now (a
//! `TypedPackage<ChunkJson>` encoded to a package, decoded back: header from the wire
//! crate, body only). `flat`: the same with a struct that declares `from`, `routing`,
//! `type` and `dest` itself and is parsed whole, as the OTA messages were before the
//! envelope. Both write the same bytes (checked), so the instruction counts compare the
//! two shapes and nothing else. The chunk is 1,024 bytes (base64: 1,368 characters).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use meshfleet_mesh::{NodeId, TypedPackage};
use meshfleet_ota::proto::{ChunkJson, CHUNK};
use meshfleet_wire::Package;
use serde::{Deserialize, Serialize};

/// The pre-envelope shape of CHUNK (703).
#[derive(Serialize, Deserialize)]
struct FlatChunk {
    from: u32,
    routing: i64,
    #[serde(rename = "type")]
    ty: i64,
    dest: u32,
    campaign: u32,
    index: u32,
    data: String,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "envelope".into());
    let n: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 31 % 251) as u8).collect();
    let data = BASE64.encode(&data);
    let mut total = 0usize;
    for i in 0..n {
        let text = match mode.as_str() {
            "flat" => {
                let msg = FlatChunk {
                    from: 1,
                    routing: 0,
                    ty: CHUNK,
                    dest: 2,
                    campaign: 7,
                    index: i,
                    data: data.clone(),
                };
                let Ok(pkg) = Package::from_serialize(&msg) else {
                    std::process::exit(2);
                };
                let Ok(back) = pkg.parse::<FlatChunk>() else {
                    std::process::exit(2);
                };
                total += back.data.len() + back.index as usize;
                pkg.text().len()
            }
            _ => {
                let body = ChunkJson {
                    campaign: 7,
                    index: i,
                    data: data.clone(),
                };
                let msg = TypedPackage::neighbour(NodeId(1), NodeId(2), body);
                let Ok(pkg) = msg.encode() else {
                    std::process::exit(2);
                };
                let Ok(back) = TypedPackage::<ChunkJson>::decode(&pkg) else {
                    std::process::exit(2);
                };
                total += back.body.data.len() + back.body.index as usize;
                pkg.text().len()
            }
        };
        total += text;
    }
    println!("{mode}: {n} chunks, checksum {total}");
}
