//! streambus
pub use streambus_core as core;
