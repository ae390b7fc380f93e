//! The pure parts of `oxemu-system-aarch64`, for tests and fuzzers in-process: the
//! command-line parser ([`cli`]) reads arguments into a [`cli::Config`] without
//! opening, creating or printing anything (deprecation warnings are returned).

#![warn(missing_docs)]

pub mod cli;
