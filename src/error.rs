//! The library's one error type.
//!
//! Every variant carries enough context to print a single line that says what went wrong,
//! where (file, record, position) and how to fix it. [`Error::exit_code`] maps it to the
//! process exit code of the contract: 2 for bad usage or bad input, 1 for runtime failures.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong inside genomamba.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed or unsupported input data (sequence files, BED, TSV, regions).
    #[error("{}: {what}{}; {fix}", shown(.path), location(.record, .position))]
    Input {
        /// The file (or `-` for stdin) that holds the bad data.
        path: String,
        /// Record name or 1-based record number, when known.
        record: Option<String>,
        /// 1-based position (line or base) inside the record or file, when known.
        position: Option<u64>,
        /// What is wrong.
        what: String,
        /// How to fix it.
        fix: String,
    },
    /// A command-line value that cannot be used (bad region syntax, chunk size 0, ...).
    #[error("{what}; {fix}")]
    Usage {
        /// What is wrong.
        what: String,
        /// How to fix it.
        fix: String,
    },
    /// A model directory that is missing files or holds inconsistent config/weights.
    #[error("model {dir}: {what}; {fix}")]
    Model {
        /// The model directory.
        dir: PathBuf,
        /// What is wrong.
        what: String,
        /// How to fix it.
        fix: String,
    },
    /// An operating-system I/O failure on a named path.
    #[error("{}: {source}", shown(.path))]
    Io {
        /// The path being read or written.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A failure while computing (backend error, device unavailable, ...).
    #[error("{0}")]
    Runtime(String),
}

/// `text` cut to about `max` bytes (at a character boundary), with `...` when cut: for
/// quoting input (a line, an id) in a one-line error.
pub fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        text.to_string()
    } else {
        format!("{}...", &text[..text.floor_char_boundary(max)])
    }
}

/// `text` with its control characters (line breaks, carriage returns, escapes, tabs) written
/// as escapes (`\n`, `\u{1b}`), so that a message quoting user text (a record id, a class
/// name, a path) stays one line on a terminal and in a log.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// An input's path as errors name it: `-` is stdin.
pub fn shown(path: &str) -> &str {
    if path == "-" { "stdin" } else { path }
}

fn location(record: &Option<String>, position: &Option<u64>) -> String {
    match (record, position) {
        (Some(r), Some(p)) => format!(" (record {r}, position {p})"),
        (Some(r), None) => format!(" (record {r})"),
        (None, Some(p)) => format!(" (line {p})"),
        (None, None) => String::new(),
    }
}

impl Error {
    /// Builds an [`Error::Input`].
    pub fn input(path: impl Into<String>, what: impl Into<String>, fix: impl Into<String>) -> Self {
        Error::Input {
            path: path.into(),
            record: None,
            position: None,
            what: what.into(),
            fix: fix.into(),
        }
    }

    /// Adds a record name to an [`Error::Input`]; other variants are returned unchanged.
    pub fn in_record(mut self, name: impl Into<String>) -> Self {
        if let Error::Input { record, .. } = &mut self {
            *record = Some(name.into());
        }
        self
    }

    /// Adds a 1-based position (base or line) to an [`Error::Input`].
    pub fn at(mut self, pos: u64) -> Self {
        if let Error::Input { position, .. } = &mut self {
            *position = Some(pos);
        }
        self
    }

    /// Adds `note` to what an [`Error::Input`] or [`Error::Usage`] says (where the bad value
    /// came from, say); other variants are returned unchanged.
    pub fn note(mut self, note: impl AsRef<str>) -> Self {
        if let Error::Input { what, .. } | Error::Usage { what, .. } = &mut self {
            what.push(' ');
            what.push_str(note.as_ref());
        }
        self
    }

    /// Puts `prefix` in front of what an [`Error::Input`] or [`Error::Usage`] says (the line
    /// that gave the bad value, say), as `PREFIX: WHAT`; other variants are returned unchanged.
    pub fn prefixed(mut self, prefix: impl AsRef<str>) -> Self {
        if let Error::Input { what, .. } | Error::Usage { what, .. } = &mut self {
            *what = format!("{}: {what}", prefix.as_ref());
        }
        self
    }

    /// Builds an [`Error::Usage`].
    pub fn usage(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Error::Usage {
            what: what.into(),
            fix: fix.into(),
        }
    }

    /// Builds an [`Error::Model`].
    pub fn model(dir: impl Into<PathBuf>, what: impl Into<String>, fix: impl Into<String>) -> Self {
        Error::Model {
            dir: dir.into(),
            what: what.into(),
            fix: fix.into(),
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// True when the error is a closed output pipe (`| head`), which the binary treats as a
    /// quiet success.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// Process exit code: 2 for bad usage or input, 1 for runtime failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Input { .. } | Error::Usage { .. } | Error::Model { .. } => 2,
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => 2,
            Error::Io { .. } | Error::Runtime(_) => 1,
        }
    }
}
