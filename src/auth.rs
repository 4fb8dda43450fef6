//! Authentication: who a client is, from its credentials, and what that identity may do
//! ([`streambus_core::Access`]), from `[auth]`.
//!
//! Credentials, in the order they are looked at:
//! - `authorization: Bearer <token>` metadata, or the `hello` frame's `token`: a static
//!   token, stored in the configuration as its SHA-256 (`streambus passwd --token`), or
//!   with `[auth.jwt]` a JWT signed by the configured key (identity, roles and
//!   permissions from its claims; its `exp` ends a `Connect` stream still open then);
//! - `authorization: Basic <base64 user:password>` metadata, or the `hello` frame's
//!   `username` and `password`: checked against the user's argon2id hash (`streambus
//!   passwd`);
//! - the client certificate, under mutual TLS: its common name (or first DNS name) is
//!   the identity.
//!
//! A token is high-entropy, so a fast hash is enough to keep it secret at rest; a
//! password is not, so it is checked with argon2id, which costs tens of milliseconds of
//! CPU on purpose. A connect storm of devices that log in with passwords would pay that
//! for each one: a successful check is remembered (the SHA-256 of user and password,
//! bounded) so that a reconnecting device pays it once. A failed one is never
//! remembered.
//!
//! An identity's quota ([`streambus_core::Quota`]) is shared by all of its sessions for
//! as long as one of them is open.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use base64::Engine;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use streambus_core::{Access, Quota};
use streambus_types::config::{
    AdminAccess, AuthConfig, CertificateIdentity, JwtAlgorithm, JwtConfig, RoleConfig, Rules, UserConfig,
};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// Password checks remembered at most (then forgotten all at once).
const REMEMBERED_PASSWORDS: usize = 10_000;

/// Identities whose quota is tracked before dead entries are swept.
const QUOTA_SWEEP: usize = 4096;

/// Permissions a JWT carries in its permissions claim.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TokenPermissions {
    publish: Rules,
    subscribe: Rules,
}

/// What a client presented.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// A bearer token.
    pub token: Option<String>,
    /// A user name and password.
    pub basic: Option<(String, String)>,
    /// The verified client certificate's identity, under mutual TLS.
    pub certificate: Option<String>,
}

impl Credentials {
    /// The credentials in request metadata (`authorization`) and the client
    /// certificate, if any.
    pub fn from_request(
        metadata: &MetadataMap,
        certs: Option<&[CertificateDer<'static>]>,
        which: CertificateIdentity,
    ) -> Credentials {
        let mut credentials =
            Credentials::from_authorization(metadata.get("authorization").and_then(|v| v.to_str().ok()));
        credentials.certificate = certs
            .and_then(|c| c.first())
            .and_then(|c| certificate_identity(c, which));
        credentials
    }

    /// The credentials of an `authorization` header value (`Bearer …` or `Basic …`).
    pub fn from_authorization(value: Option<&str>) -> Credentials {
        let mut credentials = Credentials::default();
        let Some(value) = value else {
            return credentials;
        };
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            credentials.token = Some(rest.trim().to_owned());
        } else if scheme.eq_ignore_ascii_case("basic")
            && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest.trim())
            && let Ok(text) = String::from_utf8(decoded)
            && let Some((user, password)) = text.split_once(':')
        {
            credentials.basic = Some((user.to_owned(), password.to_owned()));
        }
        credentials
    }

    /// Adds what a `hello` frame carries, where metadata had none.
    pub fn with_hello(mut self, token: &str, username: &str, password: &str) -> Credentials {
        if self.token.is_none() && !token.is_empty() {
            self.token = Some(token.to_owned());
        }
        if self.basic.is_none() && !username.is_empty() {
            self.basic = Some((username.to_owned(), password.to_owned()));
        }
        self
    }

    /// Whether anything at all was presented.
    pub fn is_empty(&self) -> bool {
        self.token.is_none() && self.basic.is_none() && self.certificate.is_none()
    }
}

/// The identity a certificate names: its subject's common name, or its first DNS name.
pub fn certificate_identity(cert: &CertificateDer<'_>, which: CertificateIdentity) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    match which {
        CertificateIdentity::CommonName => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        CertificateIdentity::DnsName => cert.subject_alternative_name().ok().flatten().and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
        }),
    }
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// The `sha256:<hex>` form of a token, as the configuration stores it.
pub fn token_hash(token: &str) -> String {
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Checks credentials against `[auth]` and builds each identity's [`Access`].
pub struct Authenticator {
    config: AuthConfig,
    users: HashMap<String, UserConfig>,
    /// Token hash → user name.
    tokens: HashMap<String, String>,
    roles: HashMap<String, RoleConfig>,
    /// Password checks that succeeded: SHA-256 of user and password.
    remembered: Mutex<HashSet<[u8; 32]>>,
    /// Each identity's shared quota, while one of its sessions holds it.
    quotas: Mutex<HashMap<String, Weak<Quota>>>,
    /// The JWT key and checks, with `[auth.jwt]`.
    jwt: Option<Jwt>,
}

/// What checks JWTs.
struct Jwt {
    config: JwtConfig,
    key: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
}

impl Jwt {
    fn new(config: &JwtConfig) -> Result<Jwt, String> {
        use jsonwebtoken::{Algorithm, DecodingKey, Validation};
        let pem = std::fs::read(&config.public_key_file)
            .map_err(|e| format!("auth.jwt.public_key_file: {}: {e}", config.public_key_file))?;
        let (key, algorithm) = match config.algorithm {
            JwtAlgorithm::ES256 => (DecodingKey::from_ec_pem(&pem), Algorithm::ES256),
            JwtAlgorithm::RS256 => (DecodingKey::from_rsa_pem(&pem), Algorithm::RS256),
            JwtAlgorithm::EdDSA => (DecodingKey::from_ed_pem(&pem), Algorithm::EdDSA),
        };
        let key = key.map_err(|e| format!("auth.jwt.public_key_file: {}: {e}", config.public_key_file))?;
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.leeway_s;
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_nbf = true;
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &config.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        Ok(Jwt {
            config: config.clone(),
            key,
            validation,
        })
    }

    /// The claims of a valid token, or why it is not.
    fn claims(&self, token: &str) -> Result<serde_json::Map<String, serde_json::Value>, Status> {
        jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| Status::unauthenticated(format!("token refused: {e}")))
    }
}

/// Whether a bearer token looks like a JWT (three dot-separated parts).
fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

impl Authenticator {
    /// An authenticator for `config` (validated beforehand); fails when the JWT key
    /// cannot be read.
    pub fn new(config: AuthConfig) -> Result<Authenticator, String> {
        let jwt = config.jwt.as_ref().map(Jwt::new).transpose()?;
        let users = config.users.iter().map(|u| (u.name.clone(), u.clone())).collect();
        let tokens = config
            .users
            .iter()
            .filter_map(|u| u.token_hash.as_ref().map(|h| (h.to_ascii_lowercase(), u.name.clone())))
            .collect();
        let roles = config.roles.iter().map(|r| (r.name.clone(), r.clone())).collect();
        Ok(Authenticator {
            config,
            users,
            tokens,
            roles,
            remembered: Mutex::new(HashSet::new()),
            quotas: Mutex::new(HashMap::new()),
            jwt,
        })
    }

    /// Which certificate name is an identity.
    pub fn certificate_identity(&self) -> CertificateIdentity {
        self.config.certificate_identity
    }

    /// The identity and rights of a client, or `UNAUTHENTICATED` (the reason names no
    /// secret).
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<Access, Status> {
        let name = if let Some(token) = &credentials.token {
            match self.tokens.get(&token_hash(token)) {
                Some(name) => name.clone(),
                None => match &self.jwt {
                    Some(jwt) if looks_like_jwt(token) => return self.jwt_access(jwt, token),
                    _ => return Err(Status::unauthenticated("unknown token")),
                },
            }
        } else if let Some((user, password)) = &credentials.basic {
            self.check_password(user, password).await?;
            user.clone()
        } else if let Some(name) = &credentials.certificate {
            name.clone()
        } else {
            return Err(Status::unauthenticated(
                "credentials required: a bearer token, a user and password, or a client certificate",
            ));
        };
        let user = self.users.get(&name);
        if user.is_some_and(|u| u.disabled) {
            return Err(Status::unauthenticated(format!("{name} is disabled")));
        }
        self.access(&name, user.map(|u| u.roles.as_slice()), None)
    }

    /// The identity and rights a valid JWT gives.
    fn jwt_access(&self, jwt: &Jwt, token: &str) -> Result<Access, Status> {
        let claims = jwt.claims(token)?;
        let name = claims
            .get(&jwt.config.identity_claim)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Status::unauthenticated(format!("token refused: no {:?} claim", jwt.config.identity_claim)))?
            .to_owned();
        let user = self.users.get(&name);
        if user.is_some_and(|u| u.disabled) {
            return Err(Status::unauthenticated(format!("{name} is disabled")));
        }
        let claimed_roles: Option<Vec<String>> = jwt.config.roles_claim.as_ref().and_then(|c| {
            claims
                .get(c)
                .and_then(|v| v.as_array())
                .map(|roles| roles.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect())
        });
        let own: Option<TokenPermissions> = match jwt.config.permissions_claim.as_ref().and_then(|c| claims.get(c)) {
            Some(value) => Some(
                serde_json::from_value(value.clone())
                    .map_err(|e| Status::unauthenticated(format!("token refused: bad permissions claim: {e}")))?,
            ),
            None => None,
        };
        let roles = claimed_roles.as_deref().or(user.map(|u| u.roles.as_slice()));
        let mut access = self.access(&name, roles, own.as_ref())?;
        if let Some(exp) = claims.get("exp").and_then(serde_json::Value::as_u64) {
            access = access.expiring(std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp));
        }
        Ok(access)
    }

    async fn check_password(&self, user: &str, password: &str) -> Result<(), Status> {
        let refused = || Status::unauthenticated("bad user name or password");
        let hash = self
            .users
            .get(user)
            .and_then(|u| u.password_hash.clone())
            .ok_or_else(refused)?;
        let key = sha256(&[user.as_bytes(), password.as_bytes(), hash.as_bytes()]);
        if self.remembered.lock().contains(&key) {
            return Ok(());
        }
        let password = password.to_owned();
        // argon2 takes tens of milliseconds of CPU: off the async workers.
        let verified = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    argon2::Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if !verified {
            return Err(refused());
        }
        let mut remembered = self.remembered.lock();
        if remembered.len() >= REMEMBERED_PASSWORDS {
            remembered.clear();
        }
        remembered.insert(key);
        Ok(())
    }

    /// The rights of `name` with `roles` (or the default roles), plus a token's own
    /// permissions.
    fn access(&self, name: &str, roles: Option<&[String]>, own: Option<&TokenPermissions>) -> Result<Access, Status> {
        let names = match roles {
            Some(r) if !r.is_empty() => r,
            _ => self.config.default_roles.as_slice(),
        };
        let roles: Vec<&RoleConfig> = names.iter().filter_map(|r| self.roles.get(r)).collect();
        let mut publish: Vec<&Rules> = roles.iter().map(|r| &r.publish).collect();
        let mut subscribe: Vec<&Rules> = roles.iter().map(|r| &r.subscribe).collect();
        if let Some(own) = own {
            publish.push(&own.publish);
            subscribe.push(&own.subscribe);
        }
        let groups: Vec<String> = roles.iter().flat_map(|r| r.queue_groups.iter().cloned()).collect();
        let quota = roles.iter().find_map(|r| r.quota.as_ref()).map(|q| self.quota(name, q));
        Access::of_roles(name, &publish, &subscribe, &groups, quota)
            .map_err(|e| Status::unauthenticated(format!("identity {name:?} cannot be used in permissions: {e}")))
    }

    /// The identity's shared quota: the live one, or a new one.
    fn quota(&self, name: &str, config: &streambus_types::config::QuotaConfig) -> Arc<Quota> {
        let mut quotas = self.quotas.lock();
        if let Some(live) = quotas.get(name).and_then(Weak::upgrade) {
            return live;
        }
        if quotas.len() >= QUOTA_SWEEP {
            quotas.retain(|_, q| q.strong_count() > 0);
        }
        let quota = Arc::new(Quota::new(config));
        quotas.insert(name.to_owned(), Arc::downgrade(&quota));
        quota
    }

    /// The admin-plane rights of an identity: the highest its roles give.
    pub fn admin_access(&self, access: &Access) -> AdminAccess {
        let roles = self
            .users
            .get(access.identity())
            .map(|u| u.roles.clone())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| self.config.default_roles.clone());
        roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .map(|r| r.admin)
            .max()
            .unwrap_or_default()
    }
}

/// The admin plane's gate: the same identities, their roles' `admin` right.
pub struct AdminGate(pub Arc<Authenticator>);

impl streambus_admin::Gate for AdminGate {
    fn rights<'a>(
        &'a self,
        authorization: Option<&'a str>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<AdminAccess, String>> + Send + 'a>> {
        Box::pin(async move {
            let credentials = Credentials::from_authorization(authorization);
            let access = self
                .0
                .authenticate(&credentials)
                .await
                .map_err(|status| status.message().to_owned())?;
            Ok(self.0.admin_access(&access))
        })
    }
}

/// An argon2id hash of `password`, in the PHC string form `[[auth.users]]` takes.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// A fresh random token (32 bytes, URL-safe base64) and its `sha256:` hash.
pub fn new_token() -> (String, String) {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = token_hash(&token);
    (token, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthConfig {
        let token_hash = token_hash("secret-token");
        AuthConfig {
            enabled: true,
            users: vec![
                UserConfig {
                    name: "ops".into(),
                    password_hash: Some(hash_password("hunter2").unwrap()),
                    token_hash: Some(token_hash),
                    roles: vec!["all".into()],
                    disabled: false,
                },
                UserConfig {
                    name: "gone".into(),
                    password_hash: Some(hash_password("pw").unwrap()),
                    token_hash: None,
                    roles: vec![],
                    disabled: true,
                },
            ],
            roles: vec![
                RoleConfig {
                    name: "all".into(),
                    publish: Rules {
                        allow: vec![">".into()],
                        deny: vec![],
                    },
                    ..RoleConfig::default()
                },
                RoleConfig {
                    name: "device".into(),
                    publish: Rules {
                        allow: vec!["sensors.{name}.>".into()],
                        deny: vec![],
                    },
                    ..RoleConfig::default()
                },
            ],
            default_roles: vec!["device".into()],
            ..AuthConfig::default()
        }
    }

    /// Each kind of credential admits its identity, and bad ones are refused; a
    /// disabled user is refused whatever it presents.
    #[tokio::test]
    async fn credentials_decide() {
        let auth = Authenticator::new(config()).unwrap();
        let creds = |token: Option<&str>, basic: Option<(&str, &str)>, cert: Option<&str>| Credentials {
            token: token.map(str::to_owned),
            basic: basic.map(|(u, p)| (u.to_owned(), p.to_owned())),
            certificate: cert.map(str::to_owned),
        };
        let ops = auth
            .authenticate(&creds(Some("secret-token"), None, None))
            .await
            .unwrap();
        assert_eq!(ops.identity(), "ops");
        assert!(ops.may_publish(&"x.y".parse().unwrap()));
        assert!(auth.authenticate(&creds(Some("guess"), None, None)).await.is_err());
        let ops = auth
            .authenticate(&creds(None, Some(("ops", "hunter2")), None))
            .await
            .unwrap();
        assert_eq!(ops.identity(), "ops");
        // Remembered now, and still refused with a wrong password.
        assert!(
            auth.authenticate(&creds(None, Some(("ops", "hunter2")), None))
                .await
                .is_ok()
        );
        assert!(
            auth.authenticate(&creds(None, Some(("ops", "hunter3")), None))
                .await
                .is_err()
        );
        assert!(
            auth.authenticate(&creds(None, Some(("gone", "pw")), None))
                .await
                .is_err()
        );
        assert!(auth.authenticate(&creds(None, None, Some("gone"))).await.is_err());
        let dev = auth.authenticate(&creds(None, None, Some("dev7"))).await.unwrap();
        assert!(dev.may_publish(&"sensors.dev7.t".parse().unwrap()));
        assert!(!dev.may_publish(&"sensors.dev8.t".parse().unwrap()));
        let none = auth.authenticate(&Credentials::default()).await.unwrap_err();
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
    }

    /// `authorization` metadata is read in both schemes, case-insensitively.
    #[test]
    fn metadata_is_read() {
        let mut md = MetadataMap::new();
        md.insert("authorization", "bearer abc".parse().unwrap());
        let c = Credentials::from_request(&md, None, CertificateIdentity::CommonName);
        assert_eq!(c.token.as_deref(), Some("abc"));
        let mut md = MetadataMap::new();
        let basic = base64::engine::general_purpose::STANDARD.encode("u:p:q");
        md.insert("authorization", format!("Basic {basic}").parse().unwrap());
        let c = Credentials::from_request(&md, None, CertificateIdentity::CommonName).with_hello("", "x", "y");
        assert_eq!(c.basic, Some(("u".into(), "p:q".into())));
        assert!(Credentials::default().with_hello("", "", "").is_empty());
    }

    /// Made tokens hash to what the configuration stores; made hashes verify.
    #[test]
    fn made_secrets_round_trip() {
        let (token, hash) = new_token();
        assert_eq!(token_hash(&token), hash);
        assert!(hash.starts_with("sha256:") && hash.len() == 71);
        let phc = hash_password("pw").unwrap();
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(argon2::Argon2::default().verify_password(b"pw", &parsed).is_ok());
    }
}
