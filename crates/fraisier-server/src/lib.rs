//! The control plane: `fraisier serve` — store, auth, engine, the local agent, and the API.

pub mod api;
pub mod auth;
pub mod limits;
pub mod local_agent;
pub mod nats;
mod notifier;
pub mod secret_keys;
pub mod signing;
pub mod streams;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fraisier_engine::{Engine, EngineSettings};
use fraisier_model::access::Roles;
use fraisier_model::config::Config;
use fraisier_store::{Store, StoreError, DEFAULT_TENANT};

pub use local_agent::{AgentLauncher, LocalAgent};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error(transparent)]
    Signing(#[from] signing::SigningError),
    #[error("cannot listen on {addr}: {source} (is another server running? set server.listen in fraisier.yaml)")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    SecretKeys(#[from] secret_keys::SecretKeyError),
    #[error("engine: {0}")]
    Engine(#[from] fraisier_engine::EngineError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

pub struct ServeOptions {
    pub config: Config,
    /// The `fraisier` binary, started as `agent` for the local provider.
    pub agent_program: PathBuf,
    pub settings: EngineSettings,
}

/// Where the local agent keeps its state inside the data dir.
pub fn agent_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("agent")
}

pub async fn open_store(config: &Config) -> Result<Store, ServerError> {
    let data_dir = &config.server.data_dir;
    match &config.server.database_url {
        Some(url) => Ok(Store::open(url).await?),
        None => Ok(Store::open_sqlite_in(data_dir).await?),
    }
}

/// Keeps the store's workspaces and projects in step with fraisier.yaml: every workspace it
/// declares (`default` always), and every project its fraises name.
async fn declare_workspaces(store: &Store, config: &Config) -> Result<(), ServerError> {
    let declared: Vec<fraisier_store::GroupFields> = config
        .workspaces
        .iter()
        .map(|(name, w)| fraisier_store::GroupFields {
            name: name.clone(),
            display_name: w.display_name.clone(),
            description: w.description.clone(),
        })
        .collect();
    store.declare_workspaces(&declared).await?;
    for (name, w) in &config.workspaces {
        let mut projects: Vec<&str> = w
            .fraises
            .values()
            .filter_map(|f| f.project.as_deref())
            .collect();
        projects.sort_unstable();
        projects.dedup();
        let projects: Vec<fraisier_store::GroupFields> = projects
            .into_iter()
            .map(|p| fraisier_store::GroupFields {
                name: p.to_string(),
                ..Default::default()
            })
            .collect();
        store.declare_projects(name, &projects).await?;
    }
    Ok(())
}

/// Creates the admin user on first start, with `FRAISIER_ADMIN_PASSWORD` or a generated
/// password written next to the database (0600).
async fn bootstrap_admin(store: &Store, data_dir: &Path) -> Result<(), ServerError> {
    if store.count_users().await? > 0 {
        return Ok(());
    }
    let (password, generated) = match std::env::var("FRAISIER_ADMIN_PASSWORD") {
        Ok(p) if !p.is_empty() => (p, false),
        _ => (auth::generate_password(), true),
    };
    let hash = auth::hash_password(&password)?;
    store
        .create_user(
            auth::ADMIN_USER,
            &hash,
            DEFAULT_TENANT,
            &["admin".to_string()],
        )
        .await?;
    if generated {
        let path = data_dir.join(auth::ADMIN_PASSWORD_FILE);
        auth::write_private(&path, format!("{password}\n").as_bytes()).map_err(|source| {
            ServerError::Write {
                path: path.clone(),
                source,
            }
        })?;
        tracing::info!(path = %path.display(), "created user admin; its generated password is in this file");
    } else {
        tracing::info!("created user admin with the password from FRAISIER_ADMIN_PASSWORD");
    }
    Ok(())
}

fn make_private_dir(path: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| ServerError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

pub async fn serve(opts: ServeOptions) -> Result<(), ServerError> {
    let config = Arc::new(opts.config);
    let data_dir = config.server.data_dir.clone();
    make_private_dir(&data_dir)?;
    let store = open_store(&config).await?;
    declare_workspaces(&store, &config).await?;
    bootstrap_admin(&store, &data_dir).await?;
    let keys = auth::Keys::load_or_create(
        &data_dir,
        config.server.token_algorithm,
        (config.server.token_ttl.0 / 1000) as i64,
    )?;
    let secrets = secret_keys::load_or_create(&data_dir)?;
    // The config was validated at load, roles included.
    let roles =
        Arc::new(Roles::new(&config.roles).map_err(|p| ServerError::Config(format!("{p:?}")))?);
    // The port first: a server that cannot listen must not leave an agent behind it.
    let listen = config.server.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: listen,
            source,
        })?;
    // The local agent is the first agent: its credential is the token kept in the data dir.
    let agent_token = auth::agent_token(&data_dir)?;
    let local = store
        .ensure_local_agent(
            &auth::api_key_hash(&agent_token),
            &fraisier_model::agent::Heartbeat {
                version: env!("CARGO_PKG_VERSION").into(),
                // The agent reports its host with its first heartbeat.
                ..Default::default()
            },
        )
        .await?;
    let bound = listener.local_addr()?;
    // The agent runs on this host: an unspecified address is reached on loopback.
    let reach = match bound.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], bound.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, bound.port()))
        }
        _ => bound,
    };
    let agent = Arc::new(LocalAgent::new(AgentLauncher {
        program: opts.agent_program,
        state_dir: agent_dir(&data_dir),
        keep_releases: config.server.keep_releases,
        secret_keys: secret_keys::key_file(&data_dir),
        server: fraisier_model::service::ServerLink {
            url: format!("http://{reach}/api/v1"),
            token: agent_token,
            agent_id: Some(format!("agt_{}", local.id)),
        },
    }));
    if let Err(e) = agent.ensure().await {
        tracing::error!(error = %e, "the local agent is not available; deployments will wait for it");
    }
    let blobs = fraisier_store::blobs::BlobStore::new(data_dir.join("blobs"));
    let settings = EngineSettings {
        work_dir: data_dir.join("work"),
        run_lease: config.server.run_lease.as_duration(),
        ..opts.settings
    };
    let engine = Engine::new(store, agent, config.clone(), secrets, blobs, settings);
    let streams = Arc::new(streams::Streams::new(
        config.server.agent_offline_after.as_duration(),
    ));
    engine
        .fleet()
        .connect(Arc::new(streams::StreamConnector(streams.clone())));
    engine.start().await?;
    let addr = listener.local_addr()?;
    spawn_housekeeping(engine.store().clone());
    notifier::spawn(engine.clone());
    let nats = nats::Nats::start(
        &config.server,
        engine.store().clone(),
        engine.job_lease("events"),
    )
    .await;
    let jobs = engine.clone();
    let state = api::AppState {
        nats,
        engine,
        keys,
        roles,
        limiter: Arc::new(limits::Limiter::new(config.server.rate_limits)),
        signing: Arc::new(signing::SigningKey::load_or_create(&data_dir)?),
        streams,
        started_at: chrono::Utc::now(),
    };
    // Scripts and tests read this line to learn the port when listening on :0.
    println!(
        "fraisier listening on http://{addr}/api/v1 (data in {})",
        data_dir.display()
    );
    tracing::info!(%addr, "listening");
    // The jobs are given up as soon as the signal comes, not after the last response (a
    // follower's stream may outlast the service manager's patience): another server on the
    // database takes them on at once rather than after the lease.
    let stopping = {
        let jobs = jobs.clone();
        async move {
            shutdown_signal().await;
            jobs.begin_stopping_jobs();
        }
    };
    let served = axum::serve(
        listener,
        api::router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stopping)
    .await;
    jobs.stop_jobs(std::time::Duration::from_secs(3)).await;
    served?;
    tracing::info!("stopped; the agent keeps serving traffic");
    Ok(())
}

/// Forgets token revocations once the tokens have expired anyway, hourly.
fn spawn_housekeeping(store: Store) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tick.tick().await;
            if let Err(e) = store.prune_revoked_tokens().await {
                tracing::warn!(error = %e, "cannot prune revoked tokens");
            }
        }
    });
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
