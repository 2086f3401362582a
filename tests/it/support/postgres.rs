//! Throwaway PostgreSQL for tests. One server per test binary, started on first use on a free
//! port, gives each test a database of its own ([`Postgres::database`]); a test that kills and
//! restarts the server gets one to itself ([`Postgres::alone`]).
//!
//! Every server starts from a copy of a template data directory that `initdb` made once per
//! machine and PostgreSQL version (Debian's `postgresql` package: `initdb` and `postgres`
//! under `/usr/lib/postgresql/<version>/bin`). The app connects over TCP as `sb`/`sb` with
//! SCRAM; setup and assertions go through `psql` as `sb` over the server's Unix socket, so
//! the tests need no PostgreSQL crate of their own. Run as root (CI), the server runs as the
//! `postgres` user the package creates, since PostgreSQL refuses root.
//!
//! The shared server outlives every test's runtime, so it is not a child that a handle kills
//! on drop: a shell watches a pipe whose other end this process holds, and shuts the server
//! down and removes its directory when the pipe closes, i.e. when the test binary exits,
//! however it exits.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::OnceCell;

use super::process::{LoggedChild, read_log};
use super::{STARTUP_TIMEOUT, TempDir, free_port};

/// How long one `psql` run may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The app's role; its password is the same.
const USER: &str = "sb";

/// Settings for a throwaway server: no fsync (every one costs start-up and test time, and the
/// OS keeps what it was handed across a server crash), but commits still written out at once
/// (synchronous_commit), so a commit survives [`Postgres::kill`] as on a real server.
const SERVER_ARGS: &[&str] = &[
    "-c",
    "listen_addresses=127.0.0.1",
    "-c",
    "fsync=off",
    "-c",
    "full_page_writes=off",
    "-c",
    "shared_buffers=16MB",
    "-c",
    "max_connections=200",
];

/// A database for one test.
pub struct Postgres {
    server: Server,
    database: String,
}

enum Server {
    /// The test binary's server.
    Shared(&'static Shared),
    /// A server of this test's own.
    Alone(Box<Alone>),
}

impl Postgres {
    /// A fresh database, owned by the app's user, on the test binary's server.
    pub async fn database() -> Postgres {
        let shared = shared().await;
        let database = next_database_name();
        psql(&shared.dir, shared.port, "postgres", "postgres")
            .run(&format!("CREATE DATABASE {database} OWNER {USER}"))
            .await
            .unwrap_or_else(|e| panic!("create database {database}: {e}"));
        Postgres {
            server: Server::Shared(shared),
            database,
        }
    }

    /// A server of its own (for tests that kill it), with one database.
    pub async fn alone() -> Postgres {
        let mut alone = Alone {
            port: free_port(),
            process: None,
            dir: TempDir::new("postgres"),
        };
        copy_template(alone.dir.path()).await;
        alone.launch().await;
        let database = next_database_name();
        create_role(alone.dir.path(), alone.port).await;
        psql(alone.dir.path(), alone.port, "postgres", "postgres")
            .run(&format!("CREATE DATABASE {database} OWNER {USER}"))
            .await
            .unwrap_or_else(|e| panic!("create database {database}: {e}"));
        Postgres {
            server: Server::Alone(Box::new(alone)),
            database,
        }
    }

    fn socket_dir_and_port(&self) -> (&Path, u16) {
        match &self.server {
            Server::Shared(shared) => (&shared.dir, shared.port),
            Server::Alone(alone) => (alone.dir.path(), alone.port),
        }
    }

    /// `postgres://sb:sb@127.0.0.1:<port>/<database>`, for the app.
    pub fn url(&self) -> String {
        let (_, port) = self.socket_dir_and_port();
        format!(
            "postgres://{USER}:{USER}@127.0.0.1:{port}/{}",
            self.database
        )
    }

    /// Runs `sql` (any number of `;`-separated statements) as the app's user in its database;
    /// panics with psql's error if it fails.
    pub async fn exec_sql(&self, sql: &str) {
        if let Err(error) = self.try_exec_sql(sql).await {
            panic!("SQL failed on PostgreSQL: {error}\nSQL: {sql}");
        }
    }

    /// Like [`Postgres::exec_sql`], returning psql's output (a line of tab-separated fields per
    /// row) or its error message.
    pub async fn try_exec_sql(&self, sql: &str) -> Result<String, String> {
        let (dir, port) = self.socket_dir_and_port();
        psql(dir, port, USER, &self.database).run(sql).await
    }

    /// The rows of `sql`'s result as strings; NULL comes back as "NULL", as MariaDB's client
    /// prints it.
    pub async fn query(&self, sql: &str) -> Vec<Vec<String>> {
        let out = self
            .try_exec_sql(sql)
            .await
            .unwrap_or_else(|error| panic!("query failed on PostgreSQL: {error}\nSQL: {sql}"));
        out.split_terminator('\n')
            .map(|line| line.split('\t').map(str::to_owned).collect())
            .collect()
    }

    /// An immediate shutdown (SIGQUIT), PostgreSQL's crash: no checkpoint, clients see their
    /// connections drop, the next start recovers. Returns once the server is gone.
    pub async fn kill(&mut self) {
        let Server::Alone(alone) = &mut self.server else {
            panic!("only a server of a test's own (Postgres::alone) may be killed");
        };
        alone.kill().await;
    }

    /// Starts it again on the same port and data (killing it first if it still runs).
    pub async fn restart(&mut self) {
        let Server::Alone(alone) = &mut self.server else {
            panic!("only a server of a test's own (Postgres::alone) may be restarted");
        };
        alone.kill().await;
        alone.launch().await;
    }

    /// Everything the server printed.
    pub fn logs(&self) -> String {
        let (dir, _) = self.socket_dir_and_port();
        read_log(&dir.join("postgres.log"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // An own server's LoggedChild prints its log itself.
        if std::thread::panicking() && matches!(self.server, Server::Shared(_)) {
            eprintln!(
                "----- shared postgres log -----\n{}\n----- end of postgres log -----",
                self.logs()
            );
        }
    }
}

/// The test binary's server: its directory (data, socket, log) and port; `_watch` is the pipe
/// whose closing stops it.
struct Shared {
    dir: PathBuf,
    port: u16,
    _watch: std::process::ChildStdin,
}

async fn shared() -> &'static Shared {
    static SHARED: OnceCell<Shared> = OnceCell::const_new();
    SHARED.get_or_init(start_shared).await
}

async fn start_shared() -> Shared {
    let started = Instant::now();
    let dir = std::env::temp_dir()
        .join("switchboard-tests")
        .join(format!("postgres-shared-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("create {}: {err}", dir.display()));
    copy_template(&dir).await;
    let port = free_port();
    let log = std::fs::File::create(dir.join("postgres.log"))
        .unwrap_or_else(|err| panic!("create the postgres log: {err}"));
    let log_err = log.try_clone().expect("duplicate log file handle");
    // The server in the background (its stdin /dev/null), then wait for EOF on ours.
    let script = r#""$@" & pid=$!; read -r _; kill -INT "$pid"; wait "$pid"; rm -rf "$DIR""#;
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(server_command(&dir, port))
        .env("DIR", &dir)
        .stdin(Stdio::piped())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|err| panic!("start the postgres watch shell: {err}"));
    let watch = child.stdin.take().expect("stdin is piped");
    // Never waited for: it ends after this process, which is what it watches.
    drop(child);
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        match psql(&dir, port, "postgres", "postgres")
            .run("SELECT 1")
            .await
        {
            Ok(_) => break,
            Err(error) if Instant::now() > deadline => panic!(
                "shared postgres did not accept connections within {STARTUP_TIMEOUT:?} \
                 (last: {error})\n{}",
                read_log(&dir.join("postgres.log"))
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    create_role(&dir, port).await;
    eprintln!(
        "shared postgres up on port {port} in {:?}",
        started.elapsed()
    );
    Shared {
        dir,
        port,
        _watch: watch,
    }
}

/// A server of one test's own, which it may kill and restart.
struct Alone {
    port: u16,
    // Declared before `dir` so the process is gone before its directory.
    process: Option<LoggedChild>,
    dir: TempDir,
}

impl Alone {
    async fn launch(&mut self) {
        let dir = self.dir.path();
        let mut parts = server_command(dir, self.port).into_iter();
        let mut command = Command::new(parts.next().expect("a program"));
        command.args(parts);
        let mut process = LoggedChild::spawn("postgres", command, &dir.join("postgres.log"));
        let what = format!("accept connections on port {}", self.port);
        process
            .wait_ready(&what, async || {
                psql(dir, self.port, "postgres", "postgres")
                    .run("SELECT 1")
                    .await
                    .map(drop)
            })
            .await;
        self.process = Some(process);
    }

    async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.signal("QUIT");
            if process.wait_exit(STARTUP_TIMEOUT).await.is_none() {
                process.kill().await;
            }
        }
    }
}

/// `postgres` on `port` with its data, socket and log in `dir`, as the `postgres` user when
/// this process is root.
fn server_command(dir: &Path, port: u16) -> Vec<String> {
    let mut command = as_server_user();
    command.push(bin("postgres").display().to_string());
    command.extend([
        "-D".into(),
        dir.join("data").display().to_string(),
        "-p".into(),
        port.to_string(),
        "-k".into(),
        dir.display().to_string(),
    ]);
    command.extend(SERVER_ARGS.iter().map(|s| (*s).to_owned()));
    command
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// The prefix that runs a program as `postgres` when root (setpriv execs it: no process in
/// between to miss a signal); nothing otherwise.
fn as_server_user() -> Vec<String> {
    if running_as_root() {
        [
            "setpriv",
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ]
        .map(str::to_owned)
        .to_vec()
    } else {
        Vec::new()
    }
}

/// Hands `dir` (recursively) to the `postgres` user when root, so the server can write there.
async fn own_dir(dir: &Path) {
    if !running_as_root() {
        return;
    }
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()
        .await
        .unwrap_or_else(|err| panic!("run chown: {err}"));
    assert!(
        status.success(),
        "chown -R postgres {}: {status}",
        dir.display()
    );
}

/// A server binary of the newest PostgreSQL under `/usr/lib/postgresql`.
fn bin(name: &str) -> PathBuf {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path()))
        })
        .max();
    match newest {
        Some((_, dir)) => dir.join("bin").join(name),
        None => panic!(
            "no /usr/lib/postgresql/<version>/bin/{name}; is postgresql installed? \
             (scripts/test installs it)"
        ),
    }
}

fn next_database_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("test{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

async fn create_role(dir: &Path, port: u16) {
    psql(dir, port, "postgres", "postgres")
        .run(&format!("CREATE ROLE {USER} LOGIN PASSWORD '{USER}'"))
        .await
        .unwrap_or_else(|e| panic!("create role {USER}: {e}"));
}

/// `cp -a` of the template data directory to `dir/data`, `dir` owned by the server's user.
async fn copy_template(dir: &Path) {
    super::template::copy(template().await, &dir.join("data")).await;
    own_dir(dir).await;
}

/// The data directory every server starts from, made by `initdb` at most once per machine
/// (until the temp dir is cleaned) and PostgreSQL version: initdb takes seconds, a copy
/// milliseconds.
async fn template() -> &'static Path {
    static TEMPLATE: OnceCell<PathBuf> = OnceCell::const_new();
    TEMPLATE.get_or_init(find_or_make_template).await
}

/// initdb's arguments: local (Unix socket) connections trusted, TCP ones with a password.
const INITDB_ARGS: &[&str] = &[
    "--username=postgres",
    "--auth-local=trust",
    "--auth-host=scram-sha-256",
    "--encoding=UTF8",
    "--locale=C.UTF-8",
    "--no-sync",
];

async fn find_or_make_template() -> PathBuf {
    let postgres = bin("postgres");
    let version = Command::new(&postgres)
        .arg("--version")
        .output()
        .await
        .unwrap_or_else(|err| panic!("run {} --version: {err}", postgres.display()))
        .stdout;
    let mut hasher = DefaultHasher::new();
    (version, INITDB_ARGS, running_as_root()).hash(&mut hasher);
    // Under the system temp dir, not the target dir: run as root, the server's user must
    // reach it, and a target dir may sit under a home it cannot enter.
    let root = std::env::temp_dir().join("switchboard-tests");
    let template = root.join(format!("postgres-template-{:016x}", hasher.finish()));
    if template.is_dir() {
        return template;
    }
    let building = super::template::building_dir(&root, "postgres");
    own_dir(&building).await;
    let data = building.join("data");
    let mut parts = as_server_user();
    parts.push(bin("initdb").display().to_string());
    let mut parts = parts.into_iter();
    let mut command = Command::new(parts.next().expect("a program"));
    command
        .args(parts)
        .arg(format!("--pgdata={}", data.display()))
        .args(INITDB_ARGS)
        .kill_on_drop(true);
    super::template::finish(command, "postgresql", &data, &template, &building).await
}

/// A `psql` run over the server's Unix socket in `dir`.
struct Psql {
    command: Command,
}

fn psql(dir: &Path, port: u16, user: &str, database: &str) -> Psql {
    let mut command = Command::new(bin("psql"));
    command
        // Not ~/.psqlrc.
        .arg("-X")
        .arg(format!("--host={}", dir.display()))
        .arg(format!("--port={port}"))
        .arg(format!("--username={user}"))
        .arg(format!("--dbname={database}"))
        // Tab-separated rows, no header or footer, no command tags, NULL as MariaDB prints it.
        .args([
            "--no-align",
            "--tuples-only",
            "--quiet",
            "--field-separator=\t",
        ])
        .args(["--pset=null=NULL", "--set=ON_ERROR_STOP=1"])
        .env("PGCONNECT_TIMEOUT", "2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    Psql { command }
}

impl Psql {
    /// Runs `sql` (from stdin); its output, or the error psql printed.
    async fn run(mut self, sql: &str) -> Result<String, String> {
        let run = async {
            let mut child = self
                .command
                .spawn()
                .map_err(|err| format!("run psql: {err}; is postgresql-client installed?"))?;
            let mut stdin = child.stdin.take().expect("psql stdin is piped");
            // A psql that cannot connect exits early; its status says why.
            let _ = stdin.write_all(sql.as_bytes()).await;
            drop(stdin);
            child
                .wait_with_output()
                .await
                .map_err(|err| format!("wait for psql: {err}"))
        };
        let output: Output = tokio::time::timeout(CLIENT_TIMEOUT, run)
            .await
            .unwrap_or_else(|_| Err(format!("psql took over {CLIENT_TIMEOUT:?}")))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "{} ({})",
                String::from_utf8_lossy(&output.stderr).trim(),
                output.status
            ))
        }
    }
}
