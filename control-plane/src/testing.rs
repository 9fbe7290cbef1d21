//! Test support (feature `test-support`, and this crate's own tests): a private
//! PostgreSQL for tests of the PostgreSQL store.
//!
//! `SIDECAR_TEST_DATABASE_URL` (`postgres://user@host:port/db`, a role that may create
//! databases) names a server to use; `scripts/test.sh` starts one for the whole run.
//! Without it the first caller in a test process starts its own: `initdb` and `postgres`
//! from Debian's `postgresql` package, in `target/test-postgres/<pid>`, on a free port,
//! as the `postgres` user when running as root (the server refuses root), stopped by the
//! kernel when the test process ends (parent-death signal). Directories of test processes
//! that are gone are removed by the next one. Every [`database`] call creates a fresh,
//! empty database on that server.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

/// A server: (base URL without the database, psql connection arguments).
struct Server {
    host: String,
    port: u16,
    user: String,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The directory holding the PostgreSQL programs.
fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program` run as the `postgres` user when we are root.
fn as_server_user(program: &Path, root: bool) -> Command {
    if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "postgres", "--regid", "postgres", "--clear-groups"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn workspace_target() -> PathBuf {
    // CARGO_MANIFEST_DIR is control-plane/; target/ is beside it.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("test-postgres")
}

/// Removes the directories of test processes that are gone.
fn sweep(base: &Path) {
    for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().parse::<u32>().ok();
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn start_private(durable: bool) -> Result<Server, String> {
    let bin = bin_dir()
        .ok_or("PostgreSQL is not installed (apt-get install postgresql; scripts/install-test-deps.sh does)")?;
    let base = workspace_target();
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    sweep(&base);
    let dir = base.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let root = is_root();
    if root {
        let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status();
        if !status.is_ok_and(|s| s.success()) {
            return Err(format!("could not give {} to the postgres user", dir.display()));
        }
    }
    let data = dir.join("data");
    let out = as_server_user(&bin.join("initdb"), root)
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale", "C", "-D"])
        .arg(&data)
        .output()
        .map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let port = free_port();
    let log = std::fs::File::create(dir.join("server.log")).map_err(|e| e.to_string())?;
    let mut server = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "postgres", "--regid", "postgres", "--clear-groups", "--pdeathsig", "KILL"])
            .arg(bin.join("postgres"));
        c
    } else {
        // Not root: no setpriv needed; the server then outlives a killed test process
        // until the next run sweeps its directory (it exits when its directory goes).
        Command::new(bin.join("postgres"))
    };
    server.arg("-D").arg(&data).args(["-p", &port.to_string(), "-k"]).arg(&dir);
    server.args(["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"]);
    // Tests need no durability (and run faster without); a benchmark of writes does.
    if !durable {
        server.args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]);
    }
    server.stdin(Stdio::null()).stdout(log.try_clone().map_err(|e| e.to_string())?).stderr(log);
    // The parent-death signal fires when the thread that started the server ends, not
    // the process: a thread of its own starts it and then waits forever.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("test-postgres".into())
        .spawn(move || {
            let started = server.spawn().map(|_child| ()).map_err(|e| format!("starting postgres: {e}"));
            let _ = tx.send(started);
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| e.to_string())?;
    rx.recv().map_err(|e| e.to_string())??;
    let server = Server { host: "127.0.0.1".into(), port, user: "postgres".into() };
    let deadline = Instant::now() + Duration::from_secs(30);
    while psql(&server, "postgres", "SELECT 1").is_err() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            return Err(format!("PostgreSQL did not start within 30 s:\n{log}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(server)
}

fn from_url(url: &str) -> Result<Server, String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or("SIDECAR_TEST_DATABASE_URL must be postgres://user@host:port/db")?;
    let (user, rest) = rest.split_once('@').ok_or("SIDECAR_TEST_DATABASE_URL needs a user")?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "5432"));
    let port = port.parse().map_err(|_| "SIDECAR_TEST_DATABASE_URL: bad port")?;
    Ok(Server { host: host.into(), port, user: user.into() })
}

fn psql(server: &Server, db: &str, sql: &str) -> Result<(), String> {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", &server.host, "-p", &server.port.to_string()])
        .args(["-U", &server.user, "-d", db, "-c", sql])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

/// A fresh, empty database on the test server: its URL.
pub fn database() -> String {
    database_on(false)
}

/// As [`database`], on a server that syncs every commit to disk as in production (when
/// this process starts its own): for measuring writes.
pub fn durable_database() -> String {
    database_on(true)
}

fn database_on(durable: bool) -> String {
    let server = SERVER
        .get_or_init(|| match std::env::var("SIDECAR_TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => from_url(&url),
            _ => start_private(durable),
        })
        .as_ref()
        .unwrap_or_else(|e| panic!("no PostgreSQL for the test: {e}"));
    let name = format!("sidecar_test_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
    psql(server, "postgres", &format!("CREATE DATABASE {name}")).unwrap_or_else(|e| panic!("CREATE DATABASE: {e}"));
    format!("postgres://{}@{}:{}/{name}", server.user, server.host, server.port)
}
