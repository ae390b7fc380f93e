//! QMP error replies.

use serde_json::{json, Value};

/// QEMU's error classes (`qapi/error.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Everything without a more specific class.
    GenericError,
    /// Unknown command, or a command in the wrong negotiation state.
    CommandNotFound,
    /// A device (or node) that was named does not exist.
    DeviceNotFound,
    /// The device is not active.
    DeviceNotActive,
    /// KVM is missing.
    KVMMissingCap,
}

impl ErrorClass {
    /// The name QMP puts in `"class"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::KVMMissingCap => "KVMMissingCap",
        }
    }
}

/// An error reply: a class and a human-readable description.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{desc}")]
pub struct QmpError {
    /// The class.
    pub class: ErrorClass,
    /// The description, worded as QEMU words it where QEMU has the same error.
    pub desc: String,
}

impl QmpError {
    /// A `GenericError`.
    pub fn generic(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    /// A `CommandNotFound` error.
    pub fn command_not_found(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::CommandNotFound,
            desc: desc.into(),
        }
    }

    /// A `DeviceNotFound` error.
    pub fn device_not_found(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::DeviceNotFound,
            desc: desc.into(),
        }
    }

    /// The `{"class": ..., "desc": ...}` object of an error reply.
    pub fn to_json(&self) -> Value {
        json!({ "class": self.class.as_str(), "desc": self.desc })
    }
}

impl From<std::io::Error> for QmpError {
    fn from(e: std::io::Error) -> Self {
        let m = e.to_string();
        // Lines after the first are hints for people at a terminal (QEMU's
        // error_append_hint), which QEMU leaves out of QMP replies.
        let first = m.lines().next().unwrap_or(&m);
        QmpError::generic(
            first
                .split(" (os error")
                .next()
                .unwrap_or(first)
                .to_string(),
        )
    }
}
