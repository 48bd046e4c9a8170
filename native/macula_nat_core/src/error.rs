use std::io;

/// Errors surfaced to callers. Each variant maps to one fixed atom in the
/// binding layer, so nothing here ever turns untrusted text into an atom.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("resource closed")]
    Closed,
    #[error("bad key file: {0}")]
    BadKeyFile(String),
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("timeout")]
    Timeout,
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// Stable short name, used as the Erlang error atom.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Closed => "closed",
            Error::BadKeyFile(_) => "bad_key_file",
            Error::Io(_) => "io",
            Error::Timeout => "timeout",
            Error::Internal(_) => "internal",
        }
    }
}
