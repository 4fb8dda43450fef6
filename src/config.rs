//! Loading the server's configuration: defaults, then a TOML file, then `STREAMBUS_*`
//! environment variables, then validation.
//!
//! Environment variables name a field by its dotted path with `__` for the dots:
//! `STREAMBUS_LIMITS__MAX_MESSAGE_BYTES=65536` sets `limits.max_message_bytes`,
//! `STREAMBUS_GRPC__ADDR=0.0.0.0:50051` sets `grpc.addr`. Variables without `__` (such
//! as `STREAMBUS_CONFIG` or `STREAMBUS_GRPC_ADDR`, read by the CLI's flags) are not
//! fields. Unknown fields are refused, whichever source names them.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use streambus_types::{BusConfig, ConfigError};

/// Prefix of the environment variables that set configuration fields.
pub const ENV_PREFIX: &str = "STREAMBUS_";

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A source could not be read, or a value does not fit the configuration's shape:
    /// the field (its dotted path, as in the TOML file), what is wrong, and where the
    /// value came from.
    #[error("invalid configuration: {}", describe(.0))]
    Parse(Box<figment::Error>),
    /// The values do not work together.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// One line per problem: `field: what is wrong (in SOURCE)`. The field is the dotted
/// path a user writes in the file (environment keys are lowercased to match it).
fn describe(error: &figment::Error) -> String {
    error
        .clone()
        .into_iter()
        .map(|e| {
            let field = e.path.iter().map(|p| p.to_lowercase()).collect::<Vec<_>>().join(".");
            let origin = e.metadata.as_ref().map(|md| match &md.source {
                Some(source) => format!(" (in {} {source})", md.name),
                None => format!(" (in {})", md.name),
            });
            let origin = origin.unwrap_or_default();
            if field.is_empty() {
                format!("{}{origin}", e.kind)
            } else {
                format!("{field}: {}{origin}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Loads the configuration from the defaults, `file` (if any, which must exist) and the
/// environment, and validates it.
pub fn load(file: Option<&Path>) -> Result<BusConfig, LoadError> {
    let mut figment = Figment::from(Serialized::defaults(BusConfig::default()));
    if let Some(file) = file {
        figment = figment.merge(Toml::file_exact(file));
    }
    let env = Env::prefixed(ENV_PREFIX)
        .filter(|key| key.as_str().contains("__"))
        .split("__");
    let config: BusConfig = figment
        .merge(env)
        .extract()
        .map_err(|e| LoadError::Parse(Box::new(e)))?;
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_toml(text: &str) -> Result<BusConfig, LoadError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("streambus.toml");
        std::fs::write(&path, text).unwrap();
        load(Some(&path))
    }

    /// A misspelt or mistyped field is named by its dotted path as written in the file
    /// (no profile prefix), with the file it came from.
    #[test]
    fn parse_errors_name_the_field_and_the_file() {
        let e = load_toml("[limits]\nmax_mesage_bytes = 3\n").unwrap_err().to_string();
        assert!(e.contains("limits.max_mesage_bytes: unknown field"), "{e}");
        assert!(!e.contains("default."), "{e}");
        assert!(e.contains("streambus.toml"), "{e}");
        let e = load_toml("[grpc]\noutbound_frames = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("invalid configuration: grpc.outbound_frames: "), "{e}");
        let e = load_toml("[topics]\nmailbox_messages = 0\n").unwrap_err().to_string();
        assert!(e.contains("topics.mailbox_messages"), "{e}");
        load_toml("[limits]\nmax_message_bytes = 4096\n").unwrap();
    }
}
