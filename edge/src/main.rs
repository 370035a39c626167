//! The `edge` binary: `serve` runs a node, `token` mints a JWT.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use edge::auth::{self, AuthSettings, JwtAlgorithm, Verifier};
use edge::config::{Config, DriverChoice, Durability, LogFormat};
use storage::StoreKind;

#[cfg(not(any(feature = "heap-stats", feature = "system-alloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
// With `system-alloc`: the C library's malloc, which heap profilers (heaptrack) follow.

/// With `heap-stats`: mimalloc, counting the live heap (`edge_heap_live_bytes`).
#[cfg(feature = "heap-stats")]
#[global_allocator]
static GLOBAL: edge::heap::Counting = edge::heap::Counting;

#[derive(Parser)]
#[command(name = "edge", version, about = "Real-time chat edge node (io_uring, thread-per-core)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an edge node.
    Serve(ServeArgs),
    /// Print a signed HS256 JWT for a user.
    Token(TokenArgs),
    /// Prepare the message store: create the embedded database, or apply the Scylla schema migrations.
    Migrate(MigrateArgs),
    /// Print the configuration as TOML (the defaults, or a file with its env overrides
    /// applied), validated as `serve` validates it.
    Config {
        /// TOML config file to load (with EDGE_* overrides) instead of the defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Only validate: print `config ok`, or the error and exit 1.
        #[arg(long)]
        check: bool,
    },
}

/// The store flags `serve` and `migrate` share.
#[derive(Parser)]
struct StoreArgs {
    /// Data directory of the embedded store.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Message store backend: embedded, postgres or scylla.
    #[arg(long, value_parser = parse_store)]
    store: Option<StoreKind>,
    /// PostgreSQL URL, postgres://user[:password]@host:port/db (implies --store postgres unless --store is given).
    #[arg(long)]
    postgres_url: Option<String>,
    /// Scylla contact points, host:port[,host:port...] (implies --store scylla unless --store is given).
    #[arg(long)]
    scylla_uri: Option<String>,
}

#[derive(Parser)]
struct MigrateArgs {
    /// TOML config file.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
}

fn parse_store(s: &str) -> Result<StoreKind, String> {
    match s {
        "embedded" => Ok(StoreKind::Embedded),
        "scylla" => Ok(StoreKind::Scylla),
        "postgres" => Ok(StoreKind::Postgres),
        other => Err(format!("unknown store {other:?}: expected embedded, postgres or scylla")),
    }
}

#[derive(Parser)]
struct ServeArgs {
    /// TOML config file; every field has a default (docs/CONFIG.md; `edge config` prints them).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long)]
    listen: Option<String>,
    /// Shards (threads); 0 = one per core.
    #[arg(long)]
    cores: Option<usize>,
    #[command(flatten)]
    store: StoreArgs,
    /// When sends are acked: fast (when sequenced) or durable (after the store commit).
    #[arg(long, value_enum)]
    durability: Option<Durability>,
    /// HS256 secret; without one (and no public key) the node runs in dev mode.
    #[arg(long)]
    jwt_secret: Option<String>,
    /// io driver.
    #[arg(long, value_enum)]
    driver: Option<DriverChoice>,
    /// Serve the conformance echo endpoint at this path (e.g. /echo).
    #[arg(long)]
    echo_path: Option<String>,
    /// Serve /metrics, /healthz and /readyz on this address only (e.g. 127.0.0.1:9090).
    #[arg(long)]
    admin_listen: Option<String>,
    /// This node's id (unique in a cluster).
    #[arg(long)]
    node_id: Option<String>,
    /// Join a cluster through this Redis (redis://HOST:PORT); without it the node runs alone.
    #[arg(long)]
    redis_url: Option<String>,
}

#[derive(Parser)]
struct TokenArgs {
    /// User id (`sub`).
    #[arg(long)]
    user: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_s: u64,
    /// Allowed room patterns, comma-separated (`*` suffix wildcard).
    #[arg(long)]
    rooms: Option<String>,
    /// Display name claim.
    #[arg(long)]
    name: Option<String>,
    /// Room patterns where the user moderates (may edit and delete anyone's messages), comma-separated.
    #[arg(long)]
    moderator: Option<String>,
    /// HS256 secret (else EDGE_JWT_SECRET or the config's).
    #[arg(long)]
    jwt_secret: Option<String>,
    /// TOML config file to read the secret from.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A dev-mode node's data dir: its kept secret is used when no other is given.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(a) => serve(a),
        Command::Token(a) => {
            init_logs(LogFormat::Text);
            token(a)
        }
        Command::Migrate(a) => {
            init_logs(LogFormat::Text);
            migrate(a)
        }
        Command::Config { config, check } => {
            let mut cfg = Config::load(config.as_deref())?;
            cfg.validate()?;
            // Without a secret (HS256), `serve` runs in dev mode: nothing more to check.
            let dev = cfg.jwt_algorithm == JwtAlgorithm::Hs256 && cfg.jwt_secret.is_empty();
            if !dev {
                auth_settings(&cfg)
                    .and_then(|s| Verifier::new(&s).map_err(anyhow::Error::from))
                    .context("JWT settings")?;
            }
            if check {
                println!("config ok{}", if dev { " (dev mode: no jwt_secret)" } else { "" });
                return Ok(());
            }
            if !cfg.jwt_secret.is_empty() {
                cfg.jwt_secret = format!("<set, {} bytes, not printed>", cfg.jwt_secret.len());
            }
            cfg.postgres_url = redact_password(&cfg.postgres_url);
            for key in &mut cfg.api_keys {
                *key = format!("<set, {} bytes, not printed>", key.len());
            }
            print!("{}", toml::to_string(&cfg).context("render the config as TOML")?);
            Ok(())
        }
    }
}

/// `postgres_url` without its password (`edge config` prints the configuration).
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // libpq `key=value` pairs.
        let pairs = url.split_whitespace().map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=<not printed>"),
            _ => kv.to_owned(),
        });
        return pairs.collect::<Vec<_>>().join(" ");
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<not printed>@{host}"),
        None => url.to_owned(),
    }
}

/// Logs to stderr as `format` says, filtered by `RUST_LOG` (default `info`); colours only
/// when stderr is a terminal.
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(a.config.as_deref())?;
    merge_flags(&mut cfg, a);
    init_logs(cfg.log_format);
    cfg.validate()?;
    if !cfg.transparent_huge_pages {
        if let Err(e) = edge::operator::disable_transparent_huge_pages() {
            tracing::warn!(error = %e, "could not turn transparent huge pages off; RSS may climb in 2 MiB steps");
        }
    }
    // One node per data dir and per address (held until the process exits).
    let _lock = edge::operator::lock_data_dir(&cfg.data_dir).map_err(anyhow::Error::msg)?;
    edge::operator::probe_listen(&cfg.listen).map_err(anyhow::Error::msg)?;
    let dev_secret = dev_mode(&mut cfg)?;
    let verifier = Verifier::new(&auth_settings(&cfg)?).context("JWT settings (--jwt-secret, EDGE_JWT_SECRET or jwt_* in --config)")?;
    let node = edge::node::start(cfg.clone(), verifier)?;
    if let Some(secret) = dev_secret {
        let token = auth::mint_hs256(&secret, "dev", 24 * 3600, None, None, now_s())?;
        let kept = cfg.data_dir.join(edge::operator::DEV_SECRET_FILE);
        tracing::warn!(secret_file = %kept.display(), "DEV MODE: no jwt_secret configured; the dev secret is kept in the data dir. Do not run this in production");
        eprintln!("DEV MODE (no jwt_secret): anyone with the data dir can mint tokens. Do not expose this node.");
        eprintln!("DEV MODE token for user \"dev\" (24 h): {token}");
        eprintln!("  more users: edge token --user bob --data-dir {}", cfg.data_dir.display());
    }
    println!(
        "edge listening on ws://{}/ws shards={} driver={} node={} store={:?} durability={:?} cluster={}",
        node.local_addr,
        cfg.shard_count(),
        node.driver,
        cfg.node_id,
        cfg.store,
        cfg.durability,
        cfg.redis_url.is_some(),
    );
    tracing::info!(addr = %node.local_addr, shards = cfg.shard_count(), driver = node.driver, "edge node started");
    node.run_until_signal()?;
    tracing::info!("edge node stopped");
    Ok(())
}

fn merge_flags(cfg: &mut Config, a: ServeArgs) {
    if let Some(v) = a.listen {
        cfg.listen = v;
    }
    if let Some(v) = a.cores {
        cfg.cores = v;
    }
    merge_store_flags(cfg, a.store);
    if let Some(v) = a.durability {
        cfg.durability = v;
    }
    if let Some(v) = a.jwt_secret {
        cfg.jwt_secret = v;
    }
    if let Some(v) = a.driver {
        cfg.driver = v;
    }
    if let Some(v) = a.admin_listen {
        cfg.admin_listen = Some(v);
    }
    if let Some(v) = a.echo_path {
        cfg.echo_path = Some(v);
    }
    if let Some(v) = a.node_id {
        cfg.node_id = v;
    }
    if let Some(v) = a.redis_url {
        cfg.redis_url = Some(v);
    }
}

fn merge_store_flags(cfg: &mut Config, a: StoreArgs) {
    if let Some(v) = a.data_dir {
        cfg.data_dir = v;
    }
    if let Some(uri) = a.scylla_uri {
        cfg.scylla_contact_points = uri.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        cfg.store = StoreKind::Scylla;
    }
    if let Some(url) = a.postgres_url {
        cfg.postgres_url = url;
        cfg.store = StoreKind::Postgres;
    }
    if let Some(v) = a.store {
        cfg.store = v;
    }
}

fn migrate(a: MigrateArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(a.config.as_deref())?;
    merge_store_flags(&mut cfg, a.store);
    cfg.validate()?;
    let done = storage::migrate(&cfg.store_config()).context("edge migrate")?;
    println!("{done}");
    Ok(())
}

/// Dev mode (HS256 with no secret): the secret kept in the data dir, or a new one kept
/// there; returned so a token can be shown.
fn dev_mode(cfg: &mut Config) -> anyhow::Result<Option<String>> {
    if cfg.jwt_algorithm != JwtAlgorithm::Hs256 || !cfg.jwt_secret.is_empty() {
        return Ok(None);
    }
    let (secret, _created) =
        edge::operator::dev_secret(&cfg.data_dir).with_context(|| format!("dev-mode secret in --data-dir {}", cfg.data_dir.display()))?;
    cfg.jwt_secret = secret;
    cfg.dev_mode = true;
    Ok(Some(cfg.jwt_secret.clone()))
}

fn auth_settings(cfg: &Config) -> anyhow::Result<AuthSettings> {
    let public_key_pem = match &cfg.jwt_public_key_file {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("jwt_public_key_file {}", p.display()))?),
        None => None,
    };
    Ok(AuthSettings {
        algorithm: cfg.jwt_algorithm,
        secret: (!cfg.jwt_secret.is_empty()).then(|| cfg.jwt_secret.clone()),
        public_key_pem,
        issuer: cfg.jwt_issuer.clone(),
        audience: cfg.jwt_audience.clone(),
        leeway_s: cfg.jwt_leeway_s,
    })
}

fn token(a: TokenArgs) -> anyhow::Result<()> {
    let cfg = Config::load(a.config.as_deref())?;
    let mut secret = a.jwt_secret.unwrap_or(cfg.jwt_secret);
    if secret.is_empty() {
        let dir = a.data_dir.unwrap_or(cfg.data_dir);
        secret = edge::operator::read_dev_secret(&dir)
            .with_context(|| format!("--data-dir {}", dir.display()))?
            .unwrap_or_default();
    }
    if secret.is_empty() {
        bail!("--jwt-secret is required (or EDGE_JWT_SECRET, jwt_secret in --config, or --data-dir of a dev-mode node)");
    }
    let patterns = |list: String| list.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
    let claims = auth::Claims {
        sub: a.user.clone(),
        exp: now_s().saturating_add(a.ttl_s),
        nbf: None,
        rooms: a.rooms.map(patterns),
        name: a.name.map(String::into_boxed_str),
        moderator: a.moderator.map(patterns),
    };
    let token = auth::mint_claims_hs256(&secret, &claims).map_err(|e| anyhow::anyhow!("--user {:?}: {e}", a.user))?;
    println!("{token}");
    Ok(())
}
