//! Start-up and serving: opening the store, first-start setup, then the gRPC port (gRPC,
//! gRPC-web, reflection, health) and the ops port until shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use http::{HeaderName, HeaderValue, Method};
use tokio::{net::TcpListener, sync::watch};
use tokio_stream::wrappers::TcpListenerStream;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::{info, warn};

use crate::{
    auth::{generate_token, hash_token},
    config::ControlConfig,
    crypto::{MasterKey, mask},
    metrics,
    state::{Shared, StateError},
    store::{Actor, BackendRecord, ConfigChange, ModelMapping, Role, Source, Store, StoreError, TokenRecord},
    util::{new_id, now_ms},
};

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The data directory cannot be used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The store failed to open or initialise.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored keys are sealed under a key we were not given.
    #[error(
        "SIDECAR_ENCRYPTION_KEY has key id {given}, but the stored API keys are sealed with key id {stored}; \
         start with the key that has id {stored} (after RotateEncryptionKey, that is the new key)"
    )]
    KeyMismatch {
        /// Key id in the store.
        stored: String,
        /// Key id of the configured key.
        given: String,
    },
    /// The config could not be built.
    #[error(transparent)]
    State(#[from] StateError),
    /// A TLS certificate, key or CA cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Traces cannot be exported as configured.
    #[error("SIDECAR_OTLP_ENDPOINT: {0}")]
    Otlp(String),
}

/// Serving failures.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The ops server failed.
    #[error("ops server: {0}")]
    Ops(std::io::Error),
    /// Reflection could not be built.
    #[error("reflection: the built-in descriptor sets do not decode: {0}")]
    Reflection(#[from] prost::DecodeError),
    /// The final flush failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An opened control plane, ready to serve.
pub struct ControlPlane {
    shared: Arc<Shared>,
    cors_origins: Vec<String>,
    console_dir: Option<std::path::PathBuf>,
    shutdown_tx: watch::Sender<bool>,
    generated_admin_token: Option<String>,
    tls: Option<Arc<crate::tls::ServerTls>>,
}

impl ControlPlane {
    /// Opens the store in the configured data directory and does first-start setup:
    /// built-in pools and settings, the key check, seeded tokens, the V1 migration.
    pub fn open(config: &ControlConfig) -> Result<Self, InitError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| InitError::DataDir { path: config.data_dir.display().to_string(), source })?;
        let store = match &config.store {
            crate::config::StoreLocation::Sled => Store::open(&config.data_dir)?,
            crate::config::StoreLocation::Postgres(url) => Store::with(crate::store::PgStore::connect(url)?),
        };
        store.initialize(&config.initial_settings)?;
        check_key(&store, &config.encryption_key)?;
        // Certificates are checked before anything is written.
        let tls = config.tls.clone().map(crate::tls::ServerTls::new).transpose()?.map(Arc::new);
        let generated_admin_token = seed_tokens(&store, config)?;
        migrate_v1(&store, config)?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut shared =
            Shared::new(store, config.encryption_key.clone(), config.backup_dir.clone(), config.fleet, shutdown_rx)?;
        shared.node_client_certs = tls.as_ref().is_some_and(|t| t.client_auth);
        let link = shared.store.cluster(&config.instance_name);
        shared.cluster = crate::cluster::Cluster::new(config.instance_name.clone(), link);
        shared.traces = config
            .otlp_endpoint
            .as_deref()
            .map(|url| sidecar_otel::Traces::start(url, "sidecar-control"))
            .transpose()
            .map_err(InitError::Otlp)?;
        let shared = Arc::new(shared);
        Ok(Self {
            shared,
            cors_origins: config.cors_origins.clone(),
            console_dir: config.console_dir.clone(),
            shutdown_tx,
            generated_admin_token,
            tls,
        })
    }

    /// The admin token generated at first start (none was configured or stored), to be
    /// shown once.
    pub fn generated_admin_token(&self) -> Option<&str> {
        self.generated_admin_token.as_deref()
    }

    /// Serves the API on `api` and `/health` + `/metrics` on `ops` until `shutdown`
    /// resolves; then ends node streams, drains, and flushes the store.
    pub async fn serve(
        self,
        api: TcpListener,
        ops: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let prometheus = metrics::install();
        metrics::config_version(self.shared.store.config_version());
        let shutdown_tx = self.shutdown_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = shutdown_tx.send(true);
        });
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };

        let mut background: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
        // Background maintenance tasks (retention sweeps, backups) are spawned here.
        background.spawn(crate::maintenance::sweeps(self.shared.clone()));
        background.spawn(crate::maintenance::backups(self.shared.clone()));

        background.spawn(crate::state::run_grants(self.shared.clone()));
        background.spawn(crate::cluster::run(self.shared.clone()));
        background.spawn(crate::state::follow_store(self.shared.clone()));
        background.spawn(crate::dashboard::run(self.shared.clone()));
        background.spawn(crate::health::run(self.shared.clone(), crate::probe::client()));

        let routes = crate::api::routes(self.shared.clone(), self.console_dir.as_deref()).await?;

        let api_addr = api.local_addr().map_err(ServeError::Ops)?;
        match &self.tls {
            Some(tls) => {
                info!(addr = %api_addr, mtls = tls.client_auth, "serving gRPC, gRPC-web and the console over TLS");
                background.spawn(tls.clone().watch(self.shutdown_tx.subscribe()));
            }
            None => {
                info!(addr = %api_addr, "serving gRPC, gRPC-web and the console (plaintext)");
                // `systemctl reload` sends SIGHUP: without TLS there is nothing to
                // reload, and the signal must not end the process.
                #[cfg(unix)]
                if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                    let mut shutdown = self.shutdown_tx.subscribe();
                    background.spawn(async move {
                        loop {
                            tokio::select! {
                                _ = hup.recv() => info!("SIGHUP: nothing to reload (no TLS configured)"),
                                _ = shutdown.wait_for(|s| *s) => return,
                            }
                        }
                    });
                }
            }
        }
        info!(addr = %ops.local_addr().map_err(ServeError::Ops)?, "serving /health and /metrics");
        let router = tonic::transport::Server::builder()
            .accept_http1(true)
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .layer(cors(&self.cors_origins))
            .add_routes(routes);
        let grpc = async {
            let done = stopped(self.shutdown_tx.subscribe());
            match &self.tls {
                Some(tls) => {
                    let incoming = tls.clone().incoming(api, self.shutdown_tx.subscribe());
                    router.serve_with_incoming_shutdown(incoming, done).await
                }
                None => router.serve_with_incoming_shutdown(TcpListenerStream::new(api), done).await,
            }
        };

        let ops_app = crate::ops::router(self.shared.clone(), prometheus);
        let ops_server = axum::serve(ops, ops_app).with_graceful_shutdown(stopped(self.shutdown_tx.subscribe()));

        let (grpc, ops) = tokio::join!(grpc, ops_server);
        background.shutdown().await;
        grpc?;
        ops.map_err(ServeError::Ops)?;
        self.shared.store.flush().await?;
        if let Some(traces) = &self.shared.traces {
            traces.shutdown().await;
        }
        info!("control plane stopped; store flushed");
        Ok(())
    }
}

/// Same-origin only unless origins are configured: with an empty list no origin matches,
/// so browsers refuse every cross-origin call.
fn cors(origins: &[String]) -> CorsLayer {
    let list: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    let header = HeaderName::from_static;
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(list))
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([
            header("content-type"),
            header("authorization"),
            header("x-grpc-web"),
            header("x-user-agent"),
            header("grpc-timeout"),
        ])
        .expose_headers([
            header("grpc-status"),
            header("grpc-message"),
            header("grpc-status-details-bin"),
            header("sidecar-field"),
        ])
        .max_age(Duration::from_secs(3600))
}

/// Refuses to start with a key that cannot open the stored API keys, and records the
/// key id on first start.
fn check_key(store: &Store, key: &MasterKey) -> Result<(), InitError> {
    let stored = match store.active_key_id()? {
        Some(id) => Some(id),
        None => store.backends()?.first().map(|b| b.api_key.key_id.clone()),
    };
    match stored {
        Some(stored) if stored != key.id() => Err(InitError::KeyMismatch { stored, given: key.id().to_owned() }),
        Some(_) => Ok(()),
        None => {
            let change = ConfigChange { active_key_id: Some(key.id().to_owned()), ..Default::default() };
            store.commit(change, &Actor::system(), "RecordKeyId", key.id())?;
            Ok(())
        }
    }
}

/// Stores the tokens given in the environment (replacing an earlier env token of the
/// same role) and, when no admin token exists at all, generates one to show once.
fn seed_tokens(store: &Store, config: &ControlConfig) -> Result<Option<String>, StoreError> {
    let tokens = store.tokens()?;
    let mut change = ConfigChange::default();
    let env_tokens = [
        (&config.admin_token, "tok_env_admin", Role::Admin, "SIDECAR_ADMIN_TOKEN"),
        (&config.node_token, "tok_env_node", Role::Node, "SIDECAR_NODE_TOKEN"),
    ];
    for (token, id, role, name) in env_tokens {
        let Some(token) = token else { continue };
        let hash = hash_token(token);
        if !tokens.iter().any(|t| t.id == id && t.hash == hash) {
            change.put_tokens.push(TokenRecord {
                id: id.into(),
                role,
                name: name.into(),
                hash,
                created_at_ms: now_ms(),
                created_by: "env".into(),
                node_id: None,
                region: None,
            });
        }
    }
    let mut generated = None;
    if config.admin_token.is_none() && !tokens.iter().any(|t| t.role == Role::Admin) {
        let secret = generate_token();
        change.put_tokens.push(TokenRecord {
            id: new_id("tok"),
            role: Role::Admin,
            name: "generated at first start".into(),
            hash: hash_token(&secret),
            created_at_ms: now_ms(),
            created_by: "system".into(),
            node_id: None,
            region: None,
        });
        generated = Some(secret);
    }
    if !change.put_tokens.is_empty() {
        store.commit(change, &Actor::system(), "SeedTokens", "tokens")?;
    }
    Ok(generated)
}

/// V1 compatibility: `SIDECAR_UPSTREAM` + `SIDECAR_API_KEY` become one backend
/// (`source=env`) the first time they are seen, unless a backend with that URL exists.
/// The backend maps `*`: it serves any model under the name the client sends.
fn migrate_v1(store: &Store, config: &ControlConfig) -> Result<(), StoreError> {
    let Some(v1) = &config.v1_upstream else {
        return Ok(());
    };
    if store.v1_migrated()? {
        return Ok(());
    }
    let mut change = ConfigChange { mark_v1_migrated: true, ..Default::default() };
    let backends = store.backends()?;
    if backends.iter().any(|b| b.base_url == v1.base_url) {
        info!(base_url = %v1.base_url, "V1 upstream already has a backend; not creating another");
    } else {
        let now = now_ms();
        let name =
            if backends.iter().any(|b| b.name == "v1-upstream") { new_id("v1-upstream") } else { "v1-upstream".into() };
        let backend = BackendRecord {
            id: new_id("bkd"),
            name,
            label: "v1".into(),
            base_url: v1.base_url.clone(),
            api_key: config.encryption_key.seal(&v1.api_key),
            api_key_masked: mask(&v1.api_key),
            timeout_seconds: crate::validate::DEFAULT_TIMEOUT_SECONDS,
            rpm_limit: v1.rpm_limit,
            tpm_limit: None,
            window_seconds: crate::validate::DEFAULT_WINDOW_SECONDS,
            learn_limits: true,
            api: Default::default(),
            pool: "primary".into(),
            enabled: true,
            weight: 1,
            model_mappings: [(
                "*".to_string(),
                ModelMapping {
                    native_id: "*".into(),
                    cost: Default::default(),
                    context_window: 128_000,
                    max_tokens: 65_536,
                    reasoning: false,
                    input_modalities: vec!["text".into()],
                    rpm_limit: None,
                    tpm_limit: None,
                    window_seconds: None,
                },
            )]
            .into(),
            regions: vec![],
            source: Source::Env,
            metadata: Default::default(),
            created_at_ms: now,
            updated_at_ms: now,
            resource_version: 1,
        };
        info!(backend = %backend.id, base_url = %v1.base_url, rpm = v1.rpm_limit, "created a backend from V1 environment");
        change.put_backends.push(backend);
    }
    if let Err(error) = store.commit(change, &Actor::system(), "MigrateV1", "env") {
        warn!(%error, "V1 migration failed");
        return Err(error);
    }
    Ok(())
}
