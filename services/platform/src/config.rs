//! Configuration: defaults, then a TOML file, then `POSTVAK_*` environment variables
//! (`__` separates levels: `POSTVAK_CELLS__LOCAL__DATABASE_URL`, `POSTVAK_HTTP__ADDR`).
//!
//! With no configuration at all Postvak runs the embedded default: one cell named `local` on a
//! SQLite file under `./data`, the in-process bus, and a master key generated into
//! `./data/master.key` on first start.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("configuration: {0}")]
    Invalid(String),
}

/// A secret string from configuration: never printed.
#[derive(Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the embedded default keeps its SQLite file and generated master key.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub http: HttpConfig,
    /// The SMTP listener's settings, read with [`Config::section`] by the ingest service's own
    /// settings type (this crate does not know its fields).
    #[serde(default)]
    pub smtp: Option<serde::de::IgnoredAny>,
    /// The raw-MIME endpoint's settings (read by the ingest service, like `smtp`).
    #[serde(default)]
    pub raw_api: Option<serde::de::IgnoredAny>,
    /// The relay replies are sent through (read by the notification service).
    #[serde(default)]
    pub outbound_smtp: Option<serde::de::IgnoredAny>,
    /// Webhook delivery limits (read by the notification service).
    #[serde(default)]
    pub webhooks: Option<serde::de::IgnoredAny>,
    /// The IMAP connector's settings (read by the ingest service).
    #[serde(default)]
    pub imap: Option<serde::de::IgnoredAny>,
    /// The blob sweeper's settings (read by the ingest service).
    #[serde(default)]
    pub blob_gc: Option<serde::de::IgnoredAny>,
    /// Draft providers' request limits and `allow_private` (read by the conversation service).
    #[serde(default)]
    pub draft_providers: Option<serde::de::IgnoredAny>,
    /// The search index's pending-list merging (read by the conversation service).
    #[serde(default)]
    pub search_index: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub security: SecurityConfig,
    #[serde(default)]
    pub bus: BusConfig,
    /// Cells by name. Empty: the embedded default cell `local`.
    #[serde(default)]
    pub cells: BTreeMap<String, CellConfig>,
    /// The cell new tenants are placed in (default: the only cell, or `local`).
    #[serde(default)]
    pub default_cell: Option<String>,
    /// The global directory database (tenant → cell, addresses, issuers). Default: the default
    /// cell's database.
    #[serde(default)]
    pub directory_database_url: Option<SecretString>,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Create the demo tenant, inbox and admin API key on first start (embedded default: on).
    #[serde(default)]
    pub demo: Option<bool>,
    /// Everything as loaded, for sections owned by other crates.
    #[serde(skip)]
    raw: RawConfig,
}

/// The merged configuration sources. Never printed: it holds secrets.
#[derive(Clone, Default)]
struct RawConfig(Option<std::sync::Arc<config::Config>>);

impl fmt::Debug for RawConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[raw configuration]")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_http_addr")]
    pub addr: String,
    /// Seconds in-flight requests and background work get to finish on shutdown.
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
    #[serde(default)]
    pub workers: Option<usize>,
    /// The URL clients reach this service at (behind a proxy or ingress), e.g.
    /// `https://inbox.example.com`: OIDC redirect URIs are built from it.
    #[serde(default)]
    pub public_url: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: default_http_addr(),
            shutdown_grace_secs: default_grace(),
            workers: None,
            public_url: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// The master key (KEK), 32 bytes base64. Prefer `master_key_file` or a KMS.
    #[serde(default)]
    pub master_key: Option<SecretString>,
    /// A file holding the base64 master key.
    #[serde(default)]
    pub master_key_file: Option<PathBuf>,
    /// Bearer token of the platform operator (tenant administration over `/v1/tenants`).
    /// Absent: tenants are created with `postvak admin create-tenant` only.
    #[serde(default)]
    pub platform_admin_token: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// Prefix of every NATS subject and stream name.
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            prefix: default_prefix(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellConfig {
    /// `postgres://…` or `sqlite:path`.
    pub database_url: SecretString,
    /// `nats://…`; absent: the in-process bus (single process only).
    #[serde(default)]
    pub nats_url: Option<String>,
    /// Pool size.
    #[serde(default = "default_pool")]
    pub max_connections: u32,
    /// PostgreSQL role the application acts as (`SET ROLE`); empty string: none.
    #[serde(default)]
    pub app_role: Option<String>,
    /// Region label shown to operators (data residency).
    #[serde(default)]
    pub region: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `json` (default) or `pretty`.
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// `RUST_LOG` syntax; `RUST_LOG` overrides.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// OTLP/HTTP endpoint, e.g. `http://127.0.0.1:4318`; absent: no trace export.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: default_log_format(),
            log_level: default_log_level(),
            otlp_endpoint: None,
            service_name: default_service_name(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
fn default_http_addr() -> String {
    "127.0.0.1:8080".into()
}
fn default_grace() -> u64 {
    30
}
fn default_prefix() -> String {
    "postvak".into()
}
fn default_pool() -> u32 {
    16
}
fn default_log_format() -> String {
    "json".into()
}
fn default_log_level() -> String {
    "info".into()
}
fn default_service_name() -> String {
    "postvak".into()
}

pub const EMBEDDED_CELL: &str = "local";

impl Config {
    /// Loads defaults, then `file` (if given; it must exist), then `POSTVAK_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As `load`, with the environment given (tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("POSTVAK_") && !k.starts_with("POSTVAK_TEST_"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("POSTVAK")
                .prefix_separator("_")
                .separator("__")
                .source(Some(env)),
        );
        let raw = builder.build().map_err(|e| match file {
            Some(p) => ConfigError::File {
                path: p.display().to_string(),
                reason: e.to_string(),
            },
            None => ConfigError::Invalid(e.to_string()),
        })?;
        let mut cfg: Config = raw.clone().try_deserialize().map_err(|e| match file {
            Some(p) => ConfigError::File {
                path: p.display().to_string(),
                reason: e.to_string(),
            },
            None => ConfigError::Invalid(e.to_string()),
        })?;
        cfg.validate()?;
        cfg.raw = RawConfig(Some(std::sync::Arc::new(raw)));
        Ok(cfg)
    }

    /// A section owned by another crate (e.g. `smtp`), deserialized into its own type with the
    /// same conversions as the rest (numbers and booleans from environment strings); absent:
    /// the type's default. Unknown keys are refused when the type says `deny_unknown_fields`.
    pub fn section<T: serde::de::DeserializeOwned + Default>(
        &self,
        name: &str,
    ) -> Result<T, ConfigError> {
        let Some(raw) = &self.raw.0 else {
            return Ok(T::default());
        };
        match raw.get::<T>(name) {
            Ok(v) => Ok(v),
            Err(config::ConfigError::NotFound(_)) => Ok(T::default()),
            Err(e) => Err(ConfigError::Invalid(format!("{name}: {e}"))),
        }
    }

    /// True when no cell is configured: the embedded default.
    pub fn is_embedded(&self) -> bool {
        self.cells.is_empty()
    }

    /// The cells to serve, with the embedded default filled in.
    pub fn effective_cells(&self) -> BTreeMap<String, CellConfig> {
        if self.cells.is_empty() {
            let path = self.data_dir.join("postvak.db");
            let mut m = BTreeMap::new();
            m.insert(
                EMBEDDED_CELL.to_owned(),
                CellConfig {
                    database_url: SecretString::new(format!("sqlite://{}", path.display())),
                    nats_url: None,
                    max_connections: default_pool(),
                    app_role: None,
                    region: Some("local".into()),
                },
            );
            m
        } else {
            self.cells.clone()
        }
    }

    pub fn default_cell_name(&self) -> String {
        if let Some(c) = &self.default_cell {
            return c.clone();
        }
        self.effective_cells()
            .keys()
            .next()
            .cloned()
            .unwrap_or_else(|| EMBEDDED_CELL.to_owned())
    }

    pub fn directory_url(&self) -> Result<SecretString, ConfigError> {
        if let Some(u) = &self.directory_database_url {
            return Ok(u.clone());
        }
        let name = self.default_cell_name();
        self.effective_cells()
            .get(&name)
            .map(|c| c.database_url.clone())
            .ok_or_else(|| ConfigError::Invalid(format!("default_cell {name:?} is not a cell")))
    }

    pub fn demo_enabled(&self) -> bool {
        self.demo.unwrap_or(self.is_embedded())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (name, cell) in &self.cells {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(ConfigError::Invalid(format!(
                    "cell name {name:?} must be letters, digits, '-' or '_'"
                )));
            }
            let url = cell.database_url.expose();
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
            {
                return Err(ConfigError::Invalid(format!(
                    "cells.{name}.database_url must start with postgres:// or sqlite:"
                )));
            }
            if let Some(n) = &cell.nats_url
                && !(n.starts_with("nats://") || n.starts_with("tls://"))
            {
                return Err(ConfigError::Invalid(format!(
                    "cells.{name}.nats_url must start with nats:// or tls:// (got {n:?})"
                )));
            }
        }
        if let Some(d) = &self.default_cell
            && !self.effective_cells().contains_key(d)
        {
            return Err(ConfigError::Invalid(format!(
                "default_cell {d:?} is not one of the configured cells"
            )));
        }
        if self.bus.prefix.is_empty()
            || !self
                .bus
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::Invalid(
                "bus.prefix must be letters, digits, '-' or '_'".into(),
            ));
        }
        if self.http.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid(format!(
                "http.addr {:?} is not host:port (e.g. 127.0.0.1:8080)",
                self.http.addr
            )));
        }
        if !matches!(self.telemetry.log_format.as_str(), "json" | "pretty") {
            return Err(ConfigError::Invalid(format!(
                "telemetry.log_format must be \"json\" or \"pretty\" (got {:?})",
                self.telemetry.log_format
            )));
        }
        Ok(())
    }

    /// The master key: configured, from a file, or (embedded default only) generated into
    /// `data_dir/master.key` on first start.
    pub fn master_key(&self) -> Result<crate::crypto::MasterKey, ConfigError> {
        let bad = |what: &str| {
            ConfigError::Invalid(format!(
                "{what} is not a valid master key (32 bytes, base64); generate one with `postvak admin gen-key`"
            ))
        };
        if let Some(k) = &self.security.master_key {
            return crate::crypto::MasterKey::from_base64(k.expose())
                .map_err(|_| bad("security.master_key"));
        }
        let (path, generate) = match &self.security.master_key_file {
            Some(p) => (p.clone(), false),
            None if self.is_embedded() => (self.data_dir.join("master.key"), true),
            None => {
                return Err(ConfigError::Invalid(
                    "security.master_key or security.master_key_file is required when cells are configured"
                        .into(),
                ));
            }
        };
        if generate && !path.exists() {
            write_new_key(&path)?;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        crate::crypto::MasterKey::from_base64(&text).map_err(|_| bad(&path.display().to_string()))
    }
}

fn write_new_key(path: &Path) -> Result<(), ConfigError> {
    use std::io::Write;
    let err = |e: std::io::Error| ConfigError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(crate::crypto::MasterKey::generate_base64().as_bytes())
        .map_err(err)?;
    f.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = crate::testkit::TempDir::new();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, toml).unwrap();
        Config::load_with_env(
            Some(&p),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn empty_config_is_the_embedded_default() {
        let c = Config::load_with_env(None, Vec::new()).unwrap();
        assert!(c.is_embedded());
        assert!(c.demo_enabled());
        let cells = c.effective_cells();
        assert!(
            cells["local"]
                .database_url
                .expose()
                .starts_with("sqlite://")
        );
    }

    #[test]
    fn env_overrides_file() {
        let c = load(
            "[cells.eu1]\ndatabase_url = \"postgres://x@h/db\"\n[http]\naddr = \"0.0.0.0:1\"\n",
            &[
                ("POSTVAK_HTTP__ADDR", "127.0.0.1:9999"),
                ("POSTVAK_CELLS__EU1__NATS_URL", "nats://127.0.0.1:4222"),
            ],
        )
        .unwrap();
        assert_eq!(c.http.addr, "127.0.0.1:9999");
        assert_eq!(
            c.cells["eu1"].nats_url.as_deref(),
            Some("nats://127.0.0.1:4222")
        );
        assert!(!c.demo_enabled());
    }

    #[test]
    fn malformed_config_gives_a_clear_error() {
        let e = load("[http\naddr = 1", &[]).unwrap_err().to_string();
        assert!(e.contains("c.toml"), "{e}");
        let e = load("[cells.eu1]\ndatabase_url = \"mysql://x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("postgres:// or sqlite:"), "{e}");
        let e = load("unknown_key = 1\n", &[]).unwrap_err().to_string();
        assert!(e.contains("unknown_key"), "{e}");
        let e = load("[http]\naddr = \"nonsense\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.addr"), "{e}");
        let e = load("default_cell = \"nope\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("default_cell"), "{e}");
    }

    #[test]
    fn missing_file_names_the_file() {
        let e = Config::load_with_env(Some(Path::new("/nonexistent/postvak.toml")), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/postvak.toml"), "{e}");
    }

    #[test]
    fn master_key_required_for_configured_cells_and_generated_for_embedded() {
        let c = load("[cells.eu1]\ndatabase_url = \"postgres://x@h/db\"\n", &[]).unwrap();
        assert!(
            c.master_key()
                .unwrap_err()
                .to_string()
                .contains("master_key")
        );
        let dir = crate::testkit::TempDir::new();
        let c = Config::load_with_env(
            None,
            vec![(
                "POSTVAK_DATA_DIR".to_string(),
                dir.path().display().to_string(),
            )],
        )
        .unwrap();
        let k1 = c.master_key().unwrap();
        let k2 = c.master_key().unwrap();
        assert_eq!(k1.id(), k2.id(), "the generated key is kept");
        let e = format!("{:?}", c.security);
        assert!(!e.contains('='), "{e}");
    }

    #[test]
    fn sections_of_other_crates_read_typed_values_from_env_and_file() {
        #[derive(Debug, Default, serde::Deserialize, PartialEq)]
        #[serde(default, deny_unknown_fields)]
        struct Smtp {
            addr: String,
            max_message_size: usize,
        }
        let c = load(
            "[smtp]\naddr = \"127.0.0.1:25\"\n",
            &[("POSTVAK_SMTP__MAX_MESSAGE_SIZE", "1000")],
        )
        .unwrap();
        assert_eq!(
            c.section::<Smtp>("smtp").unwrap(),
            Smtp {
                addr: "127.0.0.1:25".into(),
                max_message_size: 1000
            }
        );
        let c = load("", &[]).unwrap();
        assert_eq!(c.section::<Smtp>("smtp").unwrap(), Smtp::default());
        let c = load("[smtp]\nbogus = 1\n", &[]).unwrap();
        let e = c.section::<Smtp>("smtp").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn secrets_do_not_print() {
        let c = load(
            "[cells.eu1]\ndatabase_url = \"postgres://u:hunter2@h/db\"\n",
            &[],
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
