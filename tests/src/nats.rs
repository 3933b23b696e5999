//! Real `nats-server` processes.
//!
//! [`NatsServer`] starts `nats-server -js` on free loopback ports with a temporary store and
//! returns once the server logs that it is ready (no fixed sleep); dropping it kills the
//! process. [`NatsCluster`] starts three such nodes routed together with JetStream
//! clustering, for replica-3 and failover tests.
//!
//! The binary is found, in order, at `$TIDINGS_NATS_SERVER`, in the project-local tools dir
//! (`.tools/venv/bin/nats-server`, made by `scripts/install-tools`) and on `PATH`.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Oldest server with what Tidings relies on (KV TTLs, batched direct get, republish fixes).
pub const MIN_VERSION: (u32, u32) = (2, 11);

/// How long a server may take to say it is ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// What can go wrong starting a test server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable binary.
    #[error("nats-server not found: run scripts/install-tools (or set TIDINGS_NATS_SERVER)")]
    NotFound,
    /// The binary is older than [`MIN_VERSION`].
    #[error("{path} is version {version}; Tidings needs >= 2.11 (run scripts/install-tools)")]
    TooOld {
        /// The binary.
        path: String,
        /// What it reported.
        version: String,
    },
    /// Starting or waiting failed.
    #[error("nats-server did not start: {0}")]
    Start(String),
    /// Filesystem trouble.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn version_of(path: &Path) -> Option<(u32, u32, String)> {
    let out = Command::new(path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let v = text
        .split_whitespace()
        .find(|w| w.starts_with('v') || w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    let mut nums = v.trim_start_matches('v').split('.');
    let major = nums.next()?.parse().ok()?;
    let minor = nums.next()?.parse().ok()?;
    Some((major, minor, v.to_owned()))
}

/// Finds a `nats-server` binary recent enough for Tidings.
pub fn nats_server_binary() -> Result<PathBuf, Error> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("TIDINGS_NATS_SERVER") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(workspace_root().join(".tools/venv/bin/nats-server"));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    let mut too_old = None;
    for c in candidates.into_iter().filter(|c| c.is_file()) {
        match version_of(&c) {
            Some((maj, min, _)) if (maj, min) >= MIN_VERSION => return Ok(c),
            Some((_, _, version)) => {
                too_old = too_old.or(Some(Error::TooOld {
                    path: c.display().to_string(),
                    version,
                }))
            }
            None => {}
        }
    }
    Err(too_old.unwrap_or(Error::NotFound))
}

/// A free TCP port on 127.0.0.1 (the OS picks it; the listener is closed before use).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// One `nats-server` process.
pub struct NatsServer {
    child: Option<Child>,
    /// Client port.
    pub port: u16,
    /// HTTP monitoring port (`/varz`, `/jsz`).
    pub monitor_port: u16,
    /// Cluster (route) port, for clustered nodes.
    pub cluster_port: Option<u16>,
    /// WebSocket listener port (plain `ws://`), when started with one.
    pub ws_port: Option<u16>,
    /// The address it listens on (127.0.0.1, or its namespace's address).
    pub host: String,
    /// The network namespace it runs in, if any (restarts run there too).
    netns: Option<String>,
    name: String,
    config: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    _dir: Arc<tempfile::TempDir>,
}

impl NatsServer {
    /// Starts a single JetStream-enabled server on free ports with a fresh store.
    pub async fn start() -> Result<Self, Error> {
        Self::start_single(false).await
    }

    /// Like [`Self::start`], plus nats-server's own WebSocket listener (no TLS) on a free
    /// port: the load test's `--baseline nats-ws` talks to it.
    pub async fn start_with_websocket() -> Result<Self, Error> {
        Self::start_single(true).await
    }

    /// Like [`Self::start`], with `extra` appended to the server's configuration (accounts
    /// and permissions, for example).
    pub async fn start_with_config(extra: &str) -> Result<Self, Error> {
        Self::start_node(false, extra).await
    }

    async fn start_single(websocket: bool) -> Result<Self, Error> {
        Self::start_node(websocket, "").await
    }

    /// One node on free ports (three tries: a port found free may be taken meanwhile).
    async fn start_node(websocket: bool, extra: &str) -> Result<Self, Error> {
        let dir = Arc::new(tempfile::tempdir()?);
        let mut last = None;
        for _ in 0..3 {
            let node = NodeSpec {
                name: "n1".into(),
                host: Host::loopback(),
                port: free_port(),
                monitor_port: free_port(),
                cluster: None,
                ws_port: websocket.then(free_port),
            };
            match Self::launch_with(dir.clone(), node, extra).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(Error::Start("no attempt".into())))
    }

    /// Starts a single JetStream-enabled server inside network namespace `netns`, listening
    /// on `ip` (the namespace's address) at the usual ports 4222 (clients) and 8222
    /// (monitoring): the namespace is the test's own, so they are free.
    pub async fn start_in(netns: &str, ip: &str) -> Result<Self, Error> {
        let node = NodeSpec {
            name: "n1".into(),
            host: Host::namespaced(netns, ip),
            port: 4222,
            monitor_port: 8222,
            cluster: None,
            ws_port: None,
        };
        Self::launch(Arc::new(tempfile::tempdir()?), node).await
    }

    /// `nats://<host>:<port>`.
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    /// `http://<host>:<monitor port>`.
    pub fn monitor_url(&self) -> String {
        format!("http://{}:{}", self.host, self.monitor_port)
    }

    /// `ws://<host>:<websocket port>`, when started with a WebSocket listener.
    pub fn ws_url(&self) -> Option<String> {
        self.ws_port.map(|p| format!("ws://{}:{p}", self.host))
    }

    /// The process id (0 once killed).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// A connected client (fails rather than retrying forever).
    pub async fn client(&self) -> Result<async_nats::Client, Error> {
        async_nats::connect(self.url())
            .await
            .map_err(|e| Error::Start(format!("connect {}: {e}", self.url())))
    }

    /// What the server logged so far (for assertion messages).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Kills the server (SIGKILL) and waits for it; the store stays for [`Self::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the server again on the same ports with the same store.
    pub async fn restart(&mut self) -> Result<(), Error> {
        self.kill();
        let (child, log) = spawn_and_wait(&self.config, &self.name, self.netns.as_deref()).await?;
        self.child = Some(child);
        self.log = log;
        Ok(())
    }

    async fn launch(dir: Arc<tempfile::TempDir>, node: NodeSpec) -> Result<Self, Error> {
        Self::launch_with(dir, node, "").await
    }

    async fn launch_with(dir: Arc<tempfile::TempDir>, node: NodeSpec, extra: &str) -> Result<Self, Error> {
        let store = dir.path().join(&node.name);
        std::fs::create_dir_all(&store)?;
        let mut conf = format!(
            "server_name: {name}\nlisten: {host}:{port}\nhttp: {host}:{mon}\nmax_payload: 1MB\n\
             jetstream {{\n  store_dir: {store:?}\n  max_memory_store: 256MB\n  max_file_store: 2GB\n}}\n",
            name = node.name,
            host = node.host.ip,
            port = node.port,
            mon = node.monitor_port,
        );
        if let Some(ws) = node.ws_port {
            conf.push_str(&format!(
                "websocket {{\n  listen: {}:{ws}\n  no_tls: true\n}}\n",
                node.host.ip
            ));
        }
        if let Some((cport, routes)) = &node.cluster {
            let routes: Vec<String> = routes.iter().map(|r| format!("    nats-route://{r}")).collect();
            conf.push_str(&format!(
                "cluster {{\n  name: tidings-test\n  listen: {}:{cport}\n  routes: [\n{}\n  ]\n}}\n",
                node.host.ip,
                routes.join("\n")
            ));
        }
        conf.push_str(extra);
        let config = dir.path().join(format!("{}.conf", node.name));
        std::fs::write(&config, conf)?;
        let (child, log) = spawn_and_wait(&config, &node.name, node.host.netns.as_deref()).await?;
        Ok(NatsServer {
            child: Some(child),
            port: node.port,
            monitor_port: node.monitor_port,
            cluster_port: node.cluster.as_ref().map(|(p, _)| *p),
            ws_port: node.ws_port,
            host: node.host.ip,
            netns: node.host.netns,
            name: node.name,
            config,
            log,
            _dir: dir,
        })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where a node runs: its listening address, and the network namespace, if any.
struct Host {
    ip: String,
    netns: Option<String>,
}

impl Host {
    fn loopback() -> Self {
        Host {
            ip: "127.0.0.1".into(),
            netns: None,
        }
    }

    fn namespaced(netns: &str, ip: &str) -> Self {
        Host {
            ip: ip.into(),
            netns: Some(netns.into()),
        }
    }
}

struct NodeSpec {
    name: String,
    host: Host,
    port: u16,
    monitor_port: u16,
    /// Own route port and every node's route (`host:port`).
    cluster: Option<(u16, Vec<String>)>,
    /// WebSocket listener port.
    ws_port: Option<u16>,
}

/// Spawns the server (inside `netns` if given: `ip netns exec` execs it, so the pid is the
/// server's) and waits (off the async runtime) for its "Server is ready" line.
async fn spawn_and_wait(
    config: &Path,
    name: &str,
    netns: Option<&str>,
) -> Result<(Child, Arc<Mutex<Vec<String>>>), Error> {
    let bin = nats_server_binary()?;
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let mut child = command
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or_else(|| Error::Start("no stderr".into()))?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel::<bool>();
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Server is ready")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(true);
            }
            if let Ok(mut l) = sink.lock() {
                l.push(line);
            }
        }
        if let Some(tx) = tx.take() {
            let _ = tx.send(false);
        }
    });
    let ready = tokio::task::spawn_blocking(move || rx.recv_timeout(START_TIMEOUT))
        .await
        .map_err(|e| Error::Start(e.to_string()))?;
    match ready {
        Ok(true) => Ok((child, log)),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            let tail = log.lock().map(|l| l.join("\n")).unwrap_or_default();
            Err(Error::Start(format!("{name}: {other:?}; log:\n{tail}")))
        }
    }
}

/// Three JetStream nodes routed into one cluster.
pub struct NatsCluster {
    /// The nodes, in start order.
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` (usually 3) clustered nodes and waits until JetStream has a meta leader.
    pub async fn start(n: usize) -> Result<Self, Error> {
        let dir = Arc::new(tempfile::tempdir()?);
        let route_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes: Vec<String> = route_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let specs: Vec<NodeSpec> = (0..n)
            .map(|i| NodeSpec {
                name: format!("n{}", i + 1),
                host: Host::loopback(),
                port: free_port(),
                monitor_port: free_port(),
                cluster: Some((route_ports[i], routes.clone())),
                ws_port: None,
            })
            .collect();
        Self::launch_all(dir, specs).await
    }

    /// One node per `(namespace, address)` in `hosts`, each inside its own network namespace
    /// at the usual ports (4222 clients, 8222 monitoring, 6222 routes), routed together.
    pub async fn start_in(hosts: &[(String, String)]) -> Result<Self, Error> {
        let dir = Arc::new(tempfile::tempdir()?);
        let routes: Vec<String> = hosts.iter().map(|(_, ip)| format!("{ip}:6222")).collect();
        let specs: Vec<NodeSpec> = hosts
            .iter()
            .enumerate()
            .map(|(i, (ns, ip))| NodeSpec {
                name: format!("n{}", i + 1),
                host: Host::namespaced(ns, ip),
                port: 4222,
                monitor_port: 8222,
                cluster: Some((6222, routes.clone())),
                ws_port: None,
            })
            .collect();
        Self::launch_all(dir, specs).await
    }

    async fn launch_all(dir: Arc<tempfile::TempDir>, specs: Vec<NodeSpec>) -> Result<Self, Error> {
        // Start all at once: a clustered JetStream node is only ready with its peers.
        let launches = specs.into_iter().map(|s| NatsServer::launch(dir.clone(), s));
        let nodes = futures_join_all(launches).await?;
        let cluster = NatsCluster { nodes };
        cluster.wait_for_jetstream(START_TIMEOUT).await?;
        Ok(cluster)
    }

    /// Every node's client URL, comma-separated (the form of `TIDINGS_NATS_URL`).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(NatsServer::url).collect::<Vec<_>>().join(",")
    }

    /// Waits until a replica-3 stream can be created, i.e. the meta group has a leader.
    pub async fn wait_for_jetstream(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let url = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .map(NatsServer::url)
            .ok_or(Error::Start("no node running".into()))?;
        let client = async_nats::connect(url)
            .await
            .map_err(|e| Error::Start(e.to_string()))?;
        let js = async_nats::jetstream::new(client);
        let mut delay = Duration::from_millis(20);
        loop {
            match js.query_account().await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(Error::Start(format!("JetStream cluster not ready: {e}")));
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(250));
                }
            }
        }
    }
}

async fn futures_join_all<F, T>(futs: impl Iterator<Item = F>) -> Result<Vec<T>, Error>
where
    F: std::future::Future<Output = Result<T, Error>> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.map_err(|e| Error::Start(e.to_string()))??);
    }
    Ok(out)
}
