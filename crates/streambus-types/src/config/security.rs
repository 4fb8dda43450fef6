//! TLS, authentication, permissions and quotas (`[grpc.tls]`, `[auth]`).
//!
//! Everything here is off by default: the zero-config bus listens in plain text on
//! loopback and admits every client. With `auth.enabled`, nothing is admitted without
//! an identity, and each identity may do what its roles allow.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::TopicFilter;

/// TLS for a listener: certificate chain and key from PEM files, optionally a CA whose
/// client certificates are asked for (mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM.
    pub cert_file: String,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// CA certificates that sign client certificates, PEM. Set: clients are asked for a
    /// certificate, and one that does not chain to these is refused in the handshake.
    #[serde(default)]
    pub client_ca_file: Option<String>,
    /// With `client_ca_file`: refuse a client that presents no certificate at all.
    /// Without it a client may still authenticate otherwise (a token).
    #[serde(default = "yes")]
    pub require_client_cert: bool,
    /// How often the files are checked for changes, in milliseconds (a change is
    /// loaded for new handshakes; established connections keep theirs). SIGHUP checks
    /// at once. 0: only on SIGHUP.
    #[serde(default = "default_reload_check_ms")]
    pub reload_check_ms: u64,
}

fn yes() -> bool {
    true
}

fn default_reload_check_ms() -> u64 {
    5_000
}

/// Authentication and authorization.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Off (the default): every client is admitted with every right. On: a client
    /// without a valid identity is refused with `UNAUTHENTICATED`.
    pub enabled: bool,
    /// Known identities and their secrets.
    pub users: Vec<UserConfig>,
    /// Named sets of rights.
    pub roles: Vec<RoleConfig>,
    /// Roles of an identity that names none: a user without `roles`, or a client
    /// certificate whose name is not a configured user.
    pub default_roles: Vec<String>,
    /// Which name of a client certificate is its identity.
    pub certificate_identity: CertificateIdentity,
    /// Bearer tokens that are JWTs signed by a known key.
    pub jwt: Option<JwtConfig>,
}

/// JWT bearer tokens: checked against a public key; the identity, roles and
/// permissions come from claims; `exp` is enforced, also on a stream already open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The issuer's public key, PEM (SubjectPublicKeyInfo; for RS256 also PKCS#1).
    pub public_key_file: String,
    /// The signature algorithm tokens must use.
    pub algorithm: JwtAlgorithm,
    /// Required `iss`, if set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    #[serde(default)]
    pub audience: Option<String>,
    /// The claim that names the identity.
    #[serde(default = "default_identity_claim")]
    pub identity_claim: String,
    /// A claim listing role names (roles defined under `[[auth.roles]]`); absent or
    /// missing from a token: the user's roles if the identity is a user, else
    /// `auth.default_roles`.
    #[serde(default)]
    pub roles_claim: Option<String>,
    /// A claim holding permissions of the token's own, `{"publish": {"allow": […],
    /// "deny": […]}, "subscribe": {…}}`, added to its roles'.
    #[serde(default)]
    pub permissions_claim: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default)]
    pub leeway_s: u64,
}

fn default_identity_claim() -> String {
    "sub".into()
}

/// A JWT signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// RSA PKCS#1 v1.5 with SHA-256.
    RS256,
    /// Ed25519.
    EdDSA,
}

/// Which name of a verified client certificate is the identity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateIdentity {
    /// The subject's common name.
    #[default]
    CommonName,
    /// The first DNS subject alternative name.
    DnsName,
}

/// One identity: a name, how it proves itself, what it may do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The identity (`{name}` in permissions).
    pub name: String,
    /// The password's hash, as `streambus passwd` prints it (argon2id, PHC string).
    #[serde(default)]
    pub password_hash: Option<String>,
    /// The hash of a static bearer token, as `streambus passwd --token` prints it
    /// (`sha256:<hex>`).
    #[serde(default)]
    pub token_hash: Option<String>,
    /// Roles, by name; none: `auth.default_roles`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Revoked: every credential of this user is refused.
    #[serde(default)]
    pub disabled: bool,
}

/// A named set of rights.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleConfig {
    /// The role's name, as users list it.
    pub name: String,
    /// Topics it may publish to.
    pub publish: Rules,
    /// Filters it may subscribe to.
    pub subscribe: Rules,
    /// Queue groups it may join (names; `*` for any). Empty: none unless another role
    /// gives some.
    pub queue_groups: Vec<String>,
    /// What it may do on the admin plane.
    pub admin: AdminAccess,
    /// Rate and count limits for each identity that holds this role.
    pub quota: Option<QuotaConfig>,
}

/// Allow and deny lists of topic filters; `{name}` stands for the identity. A topic
/// (or a subscription's filter) is allowed when an allow entry covers it and no deny
/// entry touches it: deny wins. System topics (`$dlq.…`, `$chat.…`) are only allowed
/// by entries that name them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rules {
    /// Filters allowed.
    pub allow: Vec<String>,
    /// Filters denied.
    pub deny: Vec<String>,
}

/// Admin-plane rights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminAccess {
    /// No access.
    #[default]
    None,
    /// Read-only: status, lists, metrics.
    Read,
    /// Everything, actions included.
    Admin,
}

/// Per-identity limits, shared by every session of the identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// Sustained messages per second (0: unlimited).
    pub messages_per_second: u64,
    /// Messages that may go at once above the rate (0: one second's worth).
    pub burst_messages: u64,
    /// Sustained payload-and-header bytes per second (0: unlimited).
    pub bytes_per_second: u64,
    /// Bytes that may go at once above the rate (0: one second's worth).
    pub burst_bytes: u64,
    /// What a publish past the rate gets.
    pub when_exceeded: QuotaAction,
    /// Most sessions open at once (0: unlimited).
    pub max_sessions: usize,
    /// Most subscriptions at once over all its sessions (0: unlimited).
    pub max_subscriptions: usize,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            messages_per_second: 0,
            burst_messages: 0,
            bytes_per_second: 0,
            burst_bytes: 0,
            when_exceeded: QuotaAction::Wait,
            max_sessions: 0,
            max_subscriptions: 0,
        }
    }
}

/// What a publish past an identity's rate gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaAction {
    /// The publisher is held back until the bucket has room (backpressure: its stream
    /// stops being read). Nothing is refused.
    #[default]
    Wait,
    /// The publish is refused with `RESOURCE_EXHAUSTED`; the stream stays open.
    Refuse,
}

fn error(field: String, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        reason: reason.into(),
    }
}

/// Checks a rule list: each entry a valid filter once `{name}` is filled.
fn validate_rules(field: &str, rules: &Rules) -> Result<(), ConfigError> {
    for (list, entries) in [("allow", &rules.allow), ("deny", &rules.deny)] {
        for (i, entry) in entries.iter().enumerate() {
            let filled = entry.replace("{name}", "x");
            if let Err(e) = TopicFilter::new(&filled) {
                return Err(error(
                    format!("{field}.{list}[{i}]"),
                    format!("{entry:?} is not a filter: {e}"),
                ));
            }
        }
    }
    Ok(())
}

impl TlsConfig {
    /// Checks that the files are named (their contents are read when the listener
    /// starts).
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if self.cert_file.trim().is_empty() {
            return Err(error(format!("{field}.cert_file"), "must name a PEM file"));
        }
        if self.key_file.trim().is_empty() {
            return Err(error(format!("{field}.key_file"), "must name a PEM file"));
        }
        if self.client_ca_file.as_deref().is_some_and(|f| f.trim().is_empty()) {
            return Err(error(format!("{field}.client_ca_file"), "must name a PEM file"));
        }
        Ok(())
    }
}

impl AuthConfig {
    /// Checks names, hashes, role references and filters.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for (i, role) in self.roles.iter().enumerate() {
            let field = format!("auth.roles[{i}]");
            if role.name.trim().is_empty() {
                return Err(error(format!("{field}.name"), "must not be empty"));
            }
            if !names.insert(role.name.as_str()) {
                return Err(error(
                    format!("{field}.name"),
                    format!("{:?} is defined twice", role.name),
                ));
            }
            validate_rules(&format!("{field}.publish"), &role.publish)?;
            validate_rules(&format!("{field}.subscribe"), &role.subscribe)?;
            if let Some(q) = &role.quota
                && q.burst_messages > 0
                && q.messages_per_second == 0
            {
                return Err(error(
                    format!("{field}.quota.burst_messages"),
                    "needs messages_per_second",
                ));
            }
            if let Some(q) = &role.quota
                && q.burst_bytes > 0
                && q.bytes_per_second == 0
            {
                return Err(error(format!("{field}.quota.burst_bytes"), "needs bytes_per_second"));
            }
        }
        let known = |field: String, roles: &[String]| -> Result<(), ConfigError> {
            match roles.iter().position(|r| !names.contains(r.as_str())) {
                Some(k) => Err(error(
                    format!("{field}[{k}]"),
                    format!("no role is named {:?}", roles[k]),
                )),
                None => Ok(()),
            }
        };
        known("auth.default_roles".into(), &self.default_roles)?;
        if let Some(jwt) = &self.jwt {
            if jwt.public_key_file.trim().is_empty() {
                return Err(error("auth.jwt.public_key_file".into(), "must name a PEM file"));
            }
            if jwt.identity_claim.trim().is_empty() {
                return Err(error("auth.jwt.identity_claim".into(), "must name a claim"));
            }
        }
        let mut users = std::collections::HashSet::new();
        for (i, user) in self.users.iter().enumerate() {
            let field = format!("auth.users[{i}]");
            if user.name.trim().is_empty() {
                return Err(error(format!("{field}.name"), "must not be empty"));
            }
            if !users.insert(user.name.as_str()) {
                return Err(error(
                    format!("{field}.name"),
                    format!("{:?} is defined twice", user.name),
                ));
            }
            if let Some(hash) = &user.password_hash
                && !hash.starts_with("$argon2")
            {
                return Err(error(
                    format!("{field}.password_hash"),
                    "not an argon2 hash (make one with `streambus passwd`)",
                ));
            }
            if let Some(hash) = &user.token_hash {
                let hex = hash.strip_prefix("sha256:").unwrap_or("");
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(error(
                        format!("{field}.token_hash"),
                        "not `sha256:<64 hex digits>` (make one with `streambus passwd --token`)",
                    ));
                }
            }
            known(format!("{field}.roles"), &user.roles)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str) -> RoleConfig {
        RoleConfig {
            name: name.into(),
            ..RoleConfig::default()
        }
    }

    /// Bad entries are refused with the field named.
    #[test]
    fn errors_name_the_field() {
        let mut auth = AuthConfig {
            enabled: true,
            roles: vec![role("device")],
            ..AuthConfig::default()
        };
        auth.validate().unwrap();
        auth.roles[0].publish.allow = vec!["sensors.{name}.>".into(), "a.>.b".into()];
        assert_eq!(auth.validate().unwrap_err().field, "auth.roles[0].publish.allow[1]");
        auth.roles[0].publish.allow.pop();
        auth.default_roles = vec!["nope".into()];
        assert_eq!(auth.validate().unwrap_err().field, "auth.default_roles[0]");
        auth.default_roles = vec!["device".into()];
        auth.users = vec![UserConfig {
            name: "dev1".into(),
            password_hash: None,
            token_hash: Some("sha256:00".into()),
            roles: vec![],
            disabled: false,
        }];
        assert_eq!(auth.validate().unwrap_err().field, "auth.users[0].token_hash");
        auth.users[0].token_hash = Some(format!("sha256:{}", "ab".repeat(32)));
        auth.validate().unwrap();
        auth.users[0].password_hash = Some("plain".into());
        assert_eq!(auth.validate().unwrap_err().field, "auth.users[0].password_hash");
    }
}
