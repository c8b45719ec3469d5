//! The error type of the key serializers, with the path of the failing value.
//!
//! The path is collected while the error propagates outwards (each container adds its own
//! segment), so the success path pays nothing for it.

use std::fmt;

use crate::error::Error;

/// One step from a container to one of its elements.
#[derive(Debug, Clone)]
pub(crate) enum Segment {
    /// A struct field: `.name`.
    Field(&'static str),
    /// A sequence or tuple element: `[i]`.
    Index(u64),
    /// A map value under a rendered key: `["lr"]`, `[3]`.
    Key(String),
    /// The key itself of the `i`-th map entry (when the key failed to encode): `.<key #i>`.
    KeyOf(u64),
}

/// An encoding failure: what went wrong and where (innermost segment first).
#[derive(Debug)]
pub(crate) struct EncodeError {
    /// Segments from the failing value outwards.
    rev_path: Vec<Segment>,
    message: String,
}

impl EncodeError {
    /// A failure at the current position.
    pub(crate) fn new(message: impl Into<String>) -> Self {
        EncodeError {
            rev_path: Vec::new(),
            message: message.into(),
        }
    }

    /// Records that the failure happened inside `segment` of the enclosing container.
    pub(crate) fn at(mut self, segment: Segment) -> Self {
        self.rev_path.push(segment);
        self
    }

    /// The path, rooted at `root`, e.g. `args.train[3]`.
    pub(crate) fn path(&self, root: &str) -> String {
        let mut p = String::from(root);
        for seg in self.rev_path.iter().rev() {
            match seg {
                Segment::Field(name) => {
                    p.push('.');
                    p.push_str(name);
                }
                Segment::Index(i) => {
                    p.push('[');
                    p.push_str(&i.to_string());
                    p.push(']');
                }
                Segment::Key(k) => {
                    p.push('[');
                    p.push_str(k);
                    p.push(']');
                }
                Segment::KeyOf(i) => {
                    p.push_str(".<key #");
                    p.push_str(&i.to_string());
                    p.push('>');
                }
            }
        }
        p
    }

    /// Converts into the engine's [`Error::Unhashable`].
    pub(crate) fn into_error(self, root: &str) -> Error {
        Error::Unhashable {
            path: self.path(root),
            message: self.message,
        }
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: {}", self.path("value"), self.message)
    }
}

impl std::error::Error for EncodeError {}

impl serde::ser::Error for EncodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        EncodeError::new(msg.to_string())
    }
}
