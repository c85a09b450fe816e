//! Stack use of decoding, re-encoding and dropping the deepest frames the library accepts
//! (and of refusing deeper junk): the numbers quoted in `tests/depth.rs`. A measurement,
//! not a check; it runs ~100 child processes (this program again, one probe each):
//!
//! ```text
//! cargo run -p meshfleet-wire [--release] --example stack_use
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/deep.rs"]
mod deep;

use deep::{chain, nested_array, node_sync_frame};
use meshfleet_wire::{decode, Message, MAX_JSON_NESTING, MAX_TREE_DEPTH};

fn main() {
    // As a child of `measure_stack_use`: run one probe and report.
    if let (Ok(name), Ok(levels)) = (
        std::env::var("MESHFLEET_STACK_PROBE"),
        std::env::var("MESHFLEET_STACK_PAD"),
    ) {
        stack_probe(&name, levels.parse().expect("levels"));
        return;
    }
    measure_stack_use();
}

/// What is measured, by name: `<input> <step>`, the step being `decode`
/// (the decoded message is leaked, not dropped), `encode` (re-encoding a message decoded
/// beforehand), `drop` (dropping one) or `all` (decode, encode, drop).
fn probe(name: &str) -> Box<dyn FnOnce() + Send> {
    if name == "nothing" {
        return Box::new(|| ());
    }
    let (input, step) = name.split_once(' ').expect("<input> <step>");
    let frame = match input {
        "trivial" => br#"{"type":9,"dest":2,"from":1,"msg":"x"}"#.to_vec(),
        "tree-1" => node_sync_frame(chain(1)),
        "tree-127" => node_sync_frame(chain(MAX_TREE_DEPTH)),
        "msg-254" => format!(
            r#"{{"type":9,"dest":2,"from":1,"msg":{}}}"#,
            nested_array(MAX_JSON_NESTING - 1)
        )
        .into_bytes(),
        "junk-10^6" => nested_array(1_000_000).into_bytes(),
        _ => panic!("unknown input {input}"),
    };
    // Each closure owns only what its step uses (whatever it owns, it drops at the end).
    match step {
        "decode" => Box::new(move || std::mem::forget(decode(&frame))),
        "encode" => {
            let decoded = decode(&frame).ok();
            Box::new(move || {
                let encoded = decoded.as_ref().map(Message::encode);
                std::mem::forget((encoded, decoded));
            })
        }
        "drop" => {
            let decoded = decode(&frame).ok();
            Box::new(move || drop(decoded))
        }
        "all" => Box::new(move || drop(decode(&frame).map(|m| m.encode()))),
        _ => panic!("unknown step {step}"),
    }
}

const PROBES: [&str; 9] = [
    "trivial all",
    "tree-1 all",
    "tree-127 decode",
    "tree-127 encode",
    "tree-127 drop",
    "tree-127 all",
    "msg-254 all",
    "junk-10^6 decode",
    "junk-10^6 all",
];

/// Runs `f` below `levels` frames of at least 1 KiB each; returns the stack bytes those
/// frames took (measured from addresses, so it holds for any build).
fn below_padding(levels: usize, top: usize, f: Box<dyn FnOnce() + Send>) -> usize {
    let pad = std::hint::black_box([0u8; 1024]);
    if levels == 0 {
        let used = top - std::ptr::addr_of!(pad) as usize;
        f();
        return used;
    }
    // The addition after the call keeps this from being a tail call.
    below_padding(levels - 1, top, f) + usize::from(std::hint::black_box(pad)[0])
}

/// The thread stack `measure_stack_use` runs its probes on.
const PROBE_STACK: usize = 1 << 20;

/// Child side: on a thread with [`PROBE_STACK`] of stack, takes `levels` KiB-sized frames
/// of it, then runs probe `name` and prints how many bytes the padding took; the process
/// aborts if the rest is too little.
fn stack_probe(name: &str, levels: usize) {
    let f = probe(name);
    let padded = std::thread::Builder::new()
        .stack_size(PROBE_STACK)
        .spawn(move || {
            let top = 0u8;
            below_padding(levels, std::ptr::addr_of!(top) as usize, f)
        })
        .expect("spawn")
        .join()
        .expect("no panic");
    println!("padded {padded}");
}

/// Measures the stack each probe takes: the most padding under which it still runs, by
/// bisection over child processes (this program again), subtracted from the most under
/// which an empty probe runs (~1 KiB resolution).
fn measure_stack_use() {
    let exe = std::env::current_exe().expect("this program");
    // The padding bytes if `name` runs under `levels` frames of padding.
    let run = |name: &str, levels: usize| {
        let out = std::process::Command::new(&exe)
            .env("MESHFLEET_STACK_PROBE", name)
            .env("MESHFLEET_STACK_PAD", levels.to_string())
            .stderr(std::process::Stdio::null())
            .output()
            .expect("run probe");
        let text = String::from_utf8_lossy(&out.stdout);
        let padded = text.lines().find_map(|l| l.strip_prefix("padded "))?;
        out.status
            .success()
            .then(|| padded.parse::<usize>().expect("bytes"))
    };
    let most_padding = |name: &str| {
        let (mut lo, mut hi) = (0usize, PROBE_STACK / 1024); // runs at lo, fails at hi
        let mut padded = run(name, lo).unwrap_or_else(|| panic!("{name} fails unpadded"));
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            match run(name, mid) {
                Some(p) => (lo, padded) = (mid, p),
                None => hi = mid,
            }
        }
        padded
    };
    let room = most_padding("nothing");
    eprintln!("an empty probe runs under {} KiB of padding", room / 1024);
    for name in PROBES {
        let used = room.saturating_sub(most_padding(name));
        eprintln!("{name:>18}: {:>5.1} KiB", used as f64 / 1024.0);
    }
}
