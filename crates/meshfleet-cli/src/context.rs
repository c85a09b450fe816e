//! What every subcommand gets: the parsed config file, and shared helpers.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::de::DeserializeOwned;

/// An error in how the program was invoked (flags, config file): exit status 2.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The command ran and already said what happened; the process exits with this code
/// without an `error:` line.
#[derive(Debug)]
pub(crate) struct Exit(pub(crate) u8);

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// `println!` for a command's output: a closed stdout (`| head`) ends the command quietly
/// (exit status 0: the reader has what it wanted) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::context::write_stdout(::std::format_args!($($arg)*))?
    };
}
pub(crate) use outln;

/// One line on stdout; see [`outln`].
pub(crate) fn write_stdout(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Exit(0).into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
    }
}

/// Shorthand for returning a [`UsageError`].
pub(crate) fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// The config file's tables that a subcommand reads.
const READ_TABLES: &[&str] = &["node", "gateway", "mqtt"];

/// The global options, resolved.
#[derive(Debug, Default)]
pub(crate) struct Context {
    /// The `--config` file and its contents.
    config: Option<(PathBuf, toml::Table)>,
}

impl Context {
    /// Reads and parses `--config`, if given.
    pub(crate) fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| usage(format!("cannot read config file {}: {e}", path.display())))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e| usage(format!("config file {}: {e}", path.display())))?;
        // Only `meshfleet node` and `meshfleet gateway` take defaults from the file: a
        // table for another command would be silently ignored, so it is refused.
        if let Some(other) = table.keys().find(|k| !READ_TABLES.contains(&k.as_str())) {
            return Err(usage(format!(
                "config file {}: table [{other}] is not read (only [node], [gateway] and [mqtt] \
                 are: `meshfleet node` and `meshfleet gateway` take their defaults from the \
                 file; other commands take flags)",
                path.display()
            )));
        }
        Ok(Self {
            config: Some((path.to_owned(), table)),
        })
    }

    /// The config file's `[name]` table as `T` (`T::default()` if there is none), so
    /// each subcommand owns its section and its validation.
    pub(crate) fn section<T: DeserializeOwned + Default>(&self, name: &str) -> anyhow::Result<T> {
        let Some((path, table)) = &self.config else {
            return Ok(T::default());
        };
        let Some(value) = table.get(name) else {
            return Ok(T::default());
        };
        value
            .clone()
            .try_into()
            .map_err(|e| usage(format!("config file {}, [{name}]: {e}", path.display())))
    }
}

/// A multi-threaded tokio runtime for subcommands that do network I/O.
pub(crate) fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}
