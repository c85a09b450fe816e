//! `meshfleet firmware`: create signing keys, pack firmware images into signed, compressed
//! `.mfw` artefacts, inspect and verify them.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use meshfleet_firmware::{codec::Codec, keys, pack, Artefact, PackOptions, SignatureCheck, Version};
use serde_json::json;

use crate::context::{outln, usage, Context};

const AFTER_LONG_HELP: &str = "\
Examples:
  # Once: a signing key (keep fleet.key secret; give fleet.key.pub to the nodes)
  meshfleet firmware keygen --out fleet.key

  # Pack and sign an ESP8266 image for the nodes with role `sensor`; an 8 KiB window
  # keeps the receiver's decompressor at 18 KiB of RAM (the default 32 KiB needs 42 KiB)
  meshfleet firmware pack build/firmware.bin --role sensor --hardware ESP8266 \\
      --version 1.4.2 --window 8K --sign fleet.key --out sensor-1.4.2.mfw

  # What is inside (add --json for scripts)
  meshfleet firmware inspect sensor-1.4.2.mfw

  # Check sizes, hashes and the signature; exit status 0 only if all are good
  meshfleet firmware verify sensor-1.4.2.mfw --key fleet.key.pub";

/// Create keys, pack, inspect and verify firmware artefacts (.mfw).
#[derive(clap::Args, Debug)]
#[command(after_long_help = AFTER_LONG_HELP)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: FirmwareCommand,
}

#[derive(clap::Subcommand, Debug)]
enum FirmwareCommand {
    /// Create an Ed25519 signing key (KEY) and its public key (KEY.pub, or --pub).
    Keygen {
        /// Where to write the secret key. Refuses to overwrite an existing file.
        #[arg(long, value_name = "KEY")]
        out: PathBuf,
        /// Where to write the public key (default: KEY with `.pub` appended).
        #[arg(long = "pub", value_name = "PUB")]
        public: Option<PathBuf>,
    },
    /// Compress (and sign) a raw firmware image into an .mfw artefact.
    // `--version` here is the firmware's; the program's own stays on `meshfleet --version`.
    #[command(disable_version_flag = true)]
    Pack {
        /// The raw image, as it is flashed (e.g. an ESP8266 `firmware.bin`).
        image: PathBuf,
        /// The painlessMesh role of the nodes it is for (the OTA `role`), e.g. `sensor`.
        #[arg(long)]
        role: String,
        /// `ESP8266` or `ESP32` (any case; written as painlessMesh spells them), or
        /// `linux-<arch>` for Linux meshfleet nodes (the OTA `hardware`).
        #[arg(long, value_parser = parse_hardware)]
        hardware: String,
        /// Firmware version, e.g. `1.4.2` (nodes refuse downgrades without a signed intent,
        /// see `firmware intent`).
        #[arg(long)]
        version: String,
        /// Sign with this secret key (from `keygen`). Unsigned artefacts are refused by nodes
        /// that trust a key.
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
        /// Payload codec: `deflate` (default; raw DEFLATE) or `none`.
        #[arg(long, default_value = "deflate")]
        codec: String,
        /// Compression level 0..=10.
        #[arg(long, default_value_t = meshfleet_firmware::DEFAULT_LEVEL)]
        level: u8,
        /// DEFLATE window: bytes (or with a K/KiB suffix, e.g. `8K`), a power of two from 512
        /// to 32768. Receivers need this much RAM plus ~10 KiB of tables to decompress:
        /// 8K suits an ESP8266; the default, 32K, compresses best. Ignored with --codec none.
        #[arg(long, value_name = "BYTES", default_value = "32768", value_parser = parse_window)]
        window: u32,
        /// Bytes of payload per transmitted chunk (64..=32768).
        #[arg(long, default_value_t = meshfleet_firmware::DEFAULT_CHUNK_SIZE)]
        chunk_size: u32,
        /// Where to write the artefact. Refuses to overwrite an existing file unless
        /// --force.
        #[arg(long, value_name = "FILE.mfw")]
        out: PathBuf,
        /// Replace --out if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Sign the operator's intent to install this artefact's image where nodes would refuse
    /// it on their own: a downgrade, a re-install, an image a node rolled back. Offer it
    /// with `meshfleet ota offer FILE.mfw --intent FILE.intent`. Nodes check the signature
    /// with their fleet key, the scope (--node) and the expiry; a node that installed an
    /// image under an intent refuses older intents afterwards.
    ///
    /// With --rollback it is a rollback command instead (`docs/ota-protocol.md` 2.9): FILE is
    /// the artefact the nodes run now and go back to; give the intent to a gateway rollout
    /// (`rollback_intent` of `POST /rollouts`, `docs/rollouts.md`) so the gateway can roll
    /// nodes back by itself without holding the signing key.
    Intent {
        /// The artefact whose image the intent names.
        file: PathBuf,
        /// Sign with this secret key (the fleet key the nodes trust).
        #[arg(long, value_name = "KEY")]
        sign: PathBuf,
        /// A node the intent applies to (repeat); without any, every node of the
        /// artefact's role and hardware.
        #[arg(long = "node", value_name = "ID")]
        nodes: Vec<u32>,
        /// How long the intent stays valid, in hours (nodes that know the time check it).
        #[arg(long, value_name = "HOURS", default_value_t = 24)]
        valid_hours: u64,
        /// Where to write the intent (JSON). Refuses to overwrite an existing file.
        #[arg(long, value_name = "FILE.intent")]
        out: PathBuf,
        /// Sign a rollback command to FILE's image (the nodes' previous slot) instead of an
        /// install intent.
        #[arg(long)]
        rollback: bool,
    },
    /// Print an artefact's manifest (role, hardware, version, sizes, hashes, signer).
    Inspect {
        /// The artefact.
        file: PathBuf,
        /// One JSON object (the manifest plus derived figures) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check an artefact completely: sizes, every chunk hash, payload and image hashes,
    /// and the signature. Exit status 0 only if everything checks out.
    Verify {
        /// The artefact.
        file: PathBuf,
        /// Public key the artefact must be signed with. Without it only integrity is
        /// checked, and the command says so.
        #[arg(long, value_name = "PUB")]
        key: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(args: Args, _ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        FirmwareCommand::Keygen { out, public } => keygen(&out, public),
        FirmwareCommand::Pack { image, role, hardware, version, sign, codec, level, window, chunk_size, out, force } => {
            let version = Version::parse(&version).map_err(|e| usage(format!("--version: {e}")))?;
            let codec = Codec::from_name(&codec)
                .ok_or_else(|| usage(format!("--codec: unknown codec {codec:?} (use deflate or none)")))?;
            let key = sign.as_deref().map(keys::read_secret_key).transpose()?;
            let raw = std::fs::read(&image).with_context(|| format!("cannot read {}", image.display()))?;
            let mut opts = PackOptions::new(role, hardware, version);
            opts.codec = codec;
            opts.level = level;
            opts.window = window;
            opts.chunk_size = chunk_size;
            opts.signing_key = key.as_ref();
            opts.created = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs());
            let artefact = pack(&raw, opts).map_err(|e| usage(e.to_string()))?;
            let bytes = artefact.to_bytes();
            write_new(&out, &bytes, force)?;
            let m = artefact.manifest();
            outln!(
                "wrote {}: {} {} {} — {} bytes raw, {} bytes {} ({:.1}%{}), {} chunks, {}",
                out.display(),
                m.role,
                m.hardware,
                m.version,
                m.size,
                m.compressed_size,
                m.codec.name(),
                100.0 * m.compressed_size as f64 / m.size.max(1) as f64,
                window_note(m),
                m.chunk_count,
                if m.signature.is_some() { "signed" } else { "unsigned" }
            );
            Ok(())
        }
        FirmwareCommand::Intent { file, sign, nodes, valid_hours, out, rollback } => {
            intent(&file, &sign, nodes, valid_hours, &out, rollback)
        }
        FirmwareCommand::Inspect { file, json } => inspect(&file, json),
        FirmwareCommand::Verify { file, key, json } => verify(&file, key.as_deref(), json),
    }
}

/// `--window BYTES`: plain bytes or with a `K`/`KiB` suffix (1024 bytes), a valid DEFLATE
/// window (a power of two from 512 to 32768). Also `meshfleet node --ota-window`.
pub(crate) fn parse_window(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let (digits, unit) = match lower.strip_suffix("kib").or_else(|| lower.strip_suffix('k')) {
        Some(d) => (d.trim_end(), 1024),
        None => (lower.as_str(), 1),
    };
    let window = digits
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{s:?} is not a size in bytes (e.g. 8192 or 8K)"))?;
    Codec::Deflate
        .check_window(window)
        .map_err(|e| e.to_string())?;
    Ok(window)
}

/// ", 8 KiB window" for a deflate payload; nothing for `none`.
fn window_note(m: &meshfleet_firmware::Manifest) -> String {
    match m.codec {
        Codec::Deflate => format!(", {} KiB window", f64::from(m.window) / 1024.0),
        Codec::None => String::new(),
    }
}

fn keygen(out: &Path, public: Option<PathBuf>) -> anyhow::Result<()> {
    let public = public.unwrap_or_else(|| {
        let mut p = out.as_os_str().to_owned();
        p.push(".pub");
        PathBuf::from(p)
    });
    let key = keys::keygen(&mut rand_core::OsRng);
    keys::write_secret_key(out, &key)?;
    keys::write_public_key(&public, &key.verifying_key())?;
    outln!(
        "wrote secret key {} and public key {} (key id {})",
        out.display(),
        public.display(),
        keys::key_id(&key.verifying_key())
    );
    Ok(())
}

fn intent(
    file: &Path,
    sign: &Path,
    nodes: Vec<u32>,
    valid_hours: u64,
    out: &Path,
    rollback: bool,
) -> anyhow::Result<()> {
    let artefact = read_artefact(file)?;
    let key = keys::read_secret_key(sign)?;
    let m = artefact.manifest();
    // An intent for an image its signer did not sign would be refused by every node.
    m.verify_signature(&key.verifying_key())
        .map_err(|e| usage(format!("{}: {e}", file.display())))?;
    if nodes.len() > meshfleet_firmware::MAX_INTENT_NODES {
        return Err(usage(format!("at most {} --node", meshfleet_firmware::MAX_INTENT_NODES)));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| anyhow!("system clock before 1970: {e}"))?
        .as_secs();
    let valid = valid_hours.saturating_mul(3600);
    let mut i = if rollback {
        meshfleet_firmware::Intent::rollback_to(
            m.role.clone(),
            m.hardware.clone(),
            m.version.clone(),
            m.sha256,
            nodes,
            now,
            valid,
        )
    } else {
        meshfleet_firmware::Intent::for_manifest(m, nodes, now, valid)
    };
    i.sign(&key);
    write_new(out, &i.to_json(), false)?;
    println!(
        "wrote {}: {} {} {} {} on {} until Unix time {}",
        out.display(),
        if rollback { "roll back to" } else { "install" },
        m.role,
        m.hardware,
        m.version,
        if i.nodes.is_empty() { "every node".to_string() } else { format!("{} node(s)", i.nodes.len()) },
        i.expires
    );
    Ok(())
}

fn read_artefact(file: &Path) -> anyhow::Result<Artefact> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    Artefact::from_bytes(&bytes).with_context(|| format!("{} is not a valid .mfw artefact", file.display()))
}

fn inspect(file: &Path, as_json: bool) -> anyhow::Result<()> {
    let a = read_artefact(file)?;
    let m = a.manifest();
    if as_json {
        let mut v = serde_json::from_slice::<serde_json::Value>(&m.to_json()).context("manifest JSON")?;
        if let Some(o) = v.as_object_mut() {
            o.insert("ratio".into(), json!(m.compressed_size as f64 / m.size.max(1) as f64));
            o.insert("file_bytes".into(), json!(a.to_bytes().len()));
            // What a receiver must be able to give its decompressor (this host's figure).
            o.insert("decoder_bytes".into(), json!(m.decoder_footprint()));
        }
        outln!("{v}");
        return Ok(());
    }
    outln!("file:        {}", file.display());
    outln!("role:        {}", m.role);
    outln!("hardware:    {}", m.hardware);
    outln!("version:     {}", m.version);
    outln!("size:        {} bytes", m.size);
    outln!("md5:         {}", m.md5);
    outln!("sha256:      {}", m.sha256);
    outln!(
        "payload:     {} bytes {} ({:.1}% of the image)",
        m.compressed_size,
        m.codec.name(),
        100.0 * m.compressed_size as f64 / m.size.max(1) as f64
    );
    match m.codec {
        Codec::Deflate => outln!(
            "window:      {} bytes (the receiver's decompressor needs {} bytes of RAM)",
            m.window,
            m.decoder_footprint()
        ),
        Codec::None => outln!("window:      0 (nothing to decompress)"),
    }
    outln!("chunks:      {} x {} bytes", m.chunk_count, m.chunk_size);
    if let Some(created) = m.created {
        outln!("created:     {created} (Unix seconds)");
    }
    match (&m.key_id, &m.signature) {
        (Some(k), Some(_)) => outln!("signed by:   key {k} (not checked here: use `verify --key`)"),
        _ => outln!("signed by:   nobody (unsigned)"),
    }
    Ok(())
}

fn verify(file: &Path, key: Option<&Path>, as_json: bool) -> anyhow::Result<()> {
    let a = read_artefact(file)?;
    let key = key.map(keys::read_public_key).transpose()?;
    let verified = a.verify(key.as_ref()).map_err(|e| anyhow!("{}: verification failed: {e}", file.display()))?;
    let m = verified.manifest();
    let (signature, detail) = match verified.signature() {
        SignatureCheck::Verified(id) => ("verified", format!("signed by key {id}")),
        SignatureCheck::NotChecked { claimed_key: Some(id) } => {
            ("not_checked", format!("claims key {id}; signature NOT checked (pass --key)"))
        }
        SignatureCheck::NotChecked { claimed_key: None } => ("unsigned", "unsigned".to_owned()),
        #[allow(unreachable_patterns)]
        _ => ("unknown", "unknown signature state".to_owned()),
    };
    if as_json {
        outln!(
            "{}",
            json!({"ok": true, "file": file.display().to_string(), "role": m.role, "hardware": m.hardware,
                   "version": m.version.to_string(), "size": m.size, "sha256": m.sha256.to_string(),
                   "signature": signature})
        );
    } else {
        outln!(
            "ok: {} — {} {} {}, {} bytes, sha256 and md5 match, {} chunks intact, {detail}",
            file.display(),
            m.role,
            m.hardware,
            m.version,
            m.size,
            m.chunk_count
        );
    }
    Ok(())
}

/// Writes a new file, refusing to overwrite unless `force` (an artefact is an input to a
/// fleet update: silently replacing one is how the wrong image ships). With `force` the
/// new file is written beside it and renamed over it, so a failed write leaves the old one.
fn write_new(path: &Path, bytes: &[u8], force: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let target = if force {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        PathBuf::from(tmp)
    } else {
        path.to_owned()
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(&target).with_context(|| {
        if force {
            format!("cannot create {}", target.display())
        } else {
            format!("cannot create {} (it must not exist yet; --force replaces it)", path.display())
        }
    })?;
    f.write_all(bytes).with_context(|| format!("cannot write {}", target.display()))?;
    f.sync_all().with_context(|| format!("cannot sync {}", target.display()))?;
    if force {
        std::fs::rename(&target, path).with_context(|| format!("cannot replace {}", path.display()))?;
    }
    Ok(())
}

/// `--hardware`: `ESP8266` and `ESP32` in any case, normalised to the spelling painlessMesh
/// nodes compare with (a lowercase artefact would match no node), or `linux-<arch>`.
pub(crate) fn parse_hardware(s: &str) -> Result<String, String> {
    let t = s.trim();
    for canonical in ["ESP8266", "ESP32"] {
        if t.eq_ignore_ascii_case(canonical) {
            return Ok(canonical.to_owned());
        }
    }
    let arch = t.strip_prefix("linux-").unwrap_or_default();
    if !arch.is_empty() && arch.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Ok(t.to_owned());
    }
    Err(format!("{s:?} is not a hardware name: ESP8266, ESP32 or linux-<arch> (e.g. linux-x86_64)"))
}
