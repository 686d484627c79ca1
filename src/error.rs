//! One error type for the library, split by who must act: bad input (exit code 2) or a failure
//! while running (exit code 1). The CLI prints the message on one line and exits with the code.

use std::fmt;

/// What went wrong, and whose move it is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user's files, flags or configs are wrong; fixing them fixes the run.
    #[error("{0}")]
    Input(String),
    /// Something failed while running (device, I/O, numerics).
    #[error("{0}")]
    Runtime(String),
}

impl Error {
    pub fn input(message: impl fmt::Display) -> Self {
        Error::Input(message.to_string())
    }

    pub fn runtime(message: impl fmt::Display) -> Self {
        Error::Runtime(message.to_string())
    }

    /// The process exit code the CLI uses for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Input(_) => 2,
            Error::Runtime(_) => 1,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
