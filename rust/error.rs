//! The one error type of the core. The Python binding maps [`Error::Type`] to `TypeError` and every other
//! variant to `ValueError`; each carries the name of the argument at fault so the message can say it.

use std::fmt;

/// Everything a call into the core can reject. No path that user input reaches panics: it returns one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// An argument's value lies outside its domain (a negative size, a NaN weight, an empty array, ...).
    Value {
        /// The argument at fault.
        arg: &'static str,
        /// What is wrong with it.
        msg: String,
    },
    /// An argument has the wrong element type (a float array where ids are expected, ...).
    Type {
        /// The argument at fault.
        arg: &'static str,
        /// What is wrong with it.
        msg: String,
    },
    /// Two arguments' shapes disagree, or one has the wrong number of dimensions.
    Shape {
        /// The argument at fault.
        arg: &'static str,
        /// What is wrong with it.
        msg: String,
    },
    /// A class id is negative or not below the sampler's `range_max`.
    IdOutOfRange {
        /// The argument holding the id.
        arg: &'static str,
        /// The id.
        id: i64,
        /// The number of classes.
        range_max: u64,
    },
    /// Unique sampling cannot collect `num_sampled` distinct ids: not enough classes with non-zero
    /// probability remain (after exclusions), or the draws needed exceed the library's bound.
    TooFewClasses {
        /// The argument at fault (`num_sampled`).
        arg: &'static str,
        /// Why, with the counts.
        msg: String,
    },
    /// A size so large that the result could not be allocated or indexed.
    TooLarge {
        /// The argument at fault.
        arg: &'static str,
        /// What is too large.
        msg: String,
    },
    /// The library's own thread pool could not be built.
    Threads {
        /// The pool's error.
        msg: String,
    },
}

impl Error {
    /// An [`Error::Value`].
    pub fn value(arg: &'static str, msg: impl Into<String>) -> Self {
        Error::Value { arg, msg: msg.into() }
    }
    /// An [`Error::Type`].
    pub fn ty(arg: &'static str, msg: impl Into<String>) -> Self {
        Error::Type { arg, msg: msg.into() }
    }
    /// An [`Error::Shape`].
    pub fn shape(arg: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { arg, msg: msg.into() }
    }
    /// An [`Error::TooLarge`].
    pub fn too_large(arg: &'static str, msg: impl Into<String>) -> Self {
        Error::TooLarge { arg, msg: msg.into() }
    }
    /// The argument at fault (empty for errors that concern no argument).
    pub fn arg(&self) -> &'static str {
        match self {
            Error::Value { arg, .. }
            | Error::Type { arg, .. }
            | Error::Shape { arg, .. }
            | Error::IdOutOfRange { arg, .. }
            | Error::TooFewClasses { arg, .. }
            | Error::TooLarge { arg, .. } => arg,
            Error::Threads { .. } => "",
        }
    }
    /// True when Python should see a `TypeError` rather than a `ValueError`.
    pub fn is_type_error(&self) -> bool {
        matches!(self, Error::Type { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Value { arg, msg }
            | Error::Type { arg, msg }
            | Error::Shape { arg, msg }
            | Error::TooFewClasses { arg, msg }
            | Error::TooLarge { arg, msg } => write!(f, "{arg}: {msg}"),
            Error::IdOutOfRange { arg, id, range_max } => {
                write!(f, "{arg}: class id {id} is out of range [0, {range_max})")
            }
            Error::Threads { msg } => write!(f, "thread pool: {msg}"),
        }
    }
}

impl std::error::Error for Error {}

/// The result of a call into the core.
pub type Result<T> = std::result::Result<T, Error>;
