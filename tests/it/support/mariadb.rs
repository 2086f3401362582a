//! A throwaway MariaDB server per test, on its own port and data directory, so
//! tests can kill and restart it without disturbing each other (or the MariaDB
//! the machine may already run on 3306).
//!
//! Each server starts from a copy of a template data directory that
//! `mariadb-install-db` made, with the database [`MariaDb::DATABASE`] and the
//! user `sb`/`sb` that the app connects as over TCP. Test setup and assertions
//! go through the `mariadb` command-line client as root, so the tests need no
//! MySQL crate of their own.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::OnceCell;

use super::process::{LoggedChild, read_log};
use super::{TempDir, free_port, system_binary};

/// How long one `mariadb` client run may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings `mariadb-install-db` (its bootstrap server) and the server must
/// agree on. Small InnoDB files: the defaults (96 MiB of redo log, 12 MiB files
/// written out in full) cost more start-up time and disk than a test's few
/// rows need.
const SHARED_ARGS: &[&str] = &[
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=4M",
    "--innodb-temp-data-file-path=ibtmp1:4M:autoextend",
    // What Laravel's migrations (and Debian's packaged config) use; the
    // bootstrap needs it too, since it creates the database.
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_unicode_ci",
];

/// Run as root (CI, containers), the server must be told that this is meant.
fn user_args() -> &'static [&'static str] {
    let root = std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0);
    if root { &["--user=root"] } else { &[] }
}

pub struct MariaDb {
    port: u16,
    // Declared before `dir` so the process is gone before its data directory.
    process: Option<LoggedChild>,
    dir: TempDir,
}

impl MariaDb {
    /// The database the app uses; [`MariaDb::exec_sql`] and [`MariaDb::query`]
    /// run in it.
    pub const DATABASE: &str = "switchboard_test";
    /// The app's user (all privileges on [`MariaDb::DATABASE`] only); its
    /// password is the same.
    pub const USER: &str = "sb";

    /// Copies the template data directory and starts `mariadbd` on a free
    /// 127.0.0.1 port; returns once the app's user can connect.
    pub async fn start() -> MariaDb {
        let mut server = MariaDb {
            port: free_port(),
            process: None,
            dir: TempDir::new("mariadb"),
        };
        super::template::copy(template().await, &server.data_dir()).await;
        server.launch().await;
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mysql://sb:sb@127.0.0.1:<port>/switchboard_test`, for the app.
    pub fn url(&self) -> String {
        format!(
            "mysql://{user}:{user}@127.0.0.1:{}/{}",
            self.port,
            Self::DATABASE,
            user = Self::USER
        )
    }

    /// Everything mariadbd printed, across restarts.
    pub fn logs(&self) -> String {
        read_log(&self.log_path())
    }

    /// SIGKILL, like a crash: clients see their connections drop. Returns once
    /// the process is gone.
    pub async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
        }
    }

    /// Starts it again on the same port and data directory (killing it first
    /// if it still runs); committed data survives, as after a real crash.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.launch().await;
    }

    /// Runs `sql` (any number of `;`-separated statements) as root in
    /// [`MariaDb::DATABASE`]; panics with the client's error if it fails.
    pub async fn exec_sql(&self, sql: &str) {
        if let Err(error) = self.try_exec_sql(sql).await {
            panic!(
                "SQL failed on MariaDB port {}: {error}\nSQL: {sql}",
                self.port
            );
        }
    }

    /// Like [`MariaDb::exec_sql`], but returns the client's output (a line of
    /// tab-separated, escaped fields per row, no header) or its error message
    /// instead of panicking.
    pub async fn try_exec_sql(&self, sql: &str) -> Result<String, String> {
        let output = self.client("root", sql).await?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Err(format!("{} ({})", stderr.trim(), output.status))
        }
    }

    /// The rows of `sql`'s result as strings, without the header; SQL NULL
    /// comes back as "NULL", as the client prints it.
    pub async fn query(&self, sql: &str) -> Vec<Vec<String>> {
        let out = self.try_exec_sql(sql).await.unwrap_or_else(|error| {
            panic!(
                "query failed on MariaDB port {}: {error}\nSQL: {sql}",
                self.port
            )
        });
        // Every row ends in '\n' (escaped inside values); an empty field is
        // an empty string between tabs, so nothing here may be trimmed.
        out.split_terminator('\n')
            .map(|line| line.split('\t').map(unescape).collect())
            .collect()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mariadb.log")
    }

    async fn launch(&mut self) {
        let dir = self.dir.path();
        let mut command = Command::new(system_binary("mariadbd"));
        command
            // Ignore /etc/mysql: the machine's own server config is not ours.
            .arg("--no-defaults")
            .args(user_args())
            .arg(format!("--datadir={}", self.data_dir().display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            // Not the system server's /run/mysqld socket and pid file.
            .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--tmpdir={}", dir.display()))
            .args(SHARED_ARGS)
            .args(["--skip-log-bin", "--skip-name-resolve"])
            // SIGKILL keeps everything the OS has been handed, so flushing to
            // disk at each commit buys the tests nothing.
            .args([
                "--innodb-flush-log-at-trx-commit=2",
                "--innodb-doublewrite=0",
            ]);
        let mut process = LoggedChild::spawn("mariadbd", command, &self.log_path());
        let what = format!("accept {} on port {}", Self::USER, self.port);
        process
            .wait_ready(&what, async || {
                let output = self.client(Self::USER, "SELECT 1").await?;
                if output.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
                }
            })
            .await;
        self.process = Some(process);
    }

    /// Runs the `mariadb` client over TCP as `user` (password: none for root,
    /// the user's name otherwise) with `sql` on its stdin.
    async fn client(&self, user: &str, sql: &str) -> Result<Output, String> {
        let mut command = Command::new(system_binary("mariadb"));
        command
            .arg("--no-defaults")
            .args(["--protocol=TCP", "--host=127.0.0.1", "--connect-timeout=2"])
            // Not whatever the test's locale would pick.
            .arg("--default-character-set=utf8mb4")
            .arg(format!("--port={}", self.port))
            .arg(format!("--user={user}"))
            // Tab-separated rows with \t, \n and \\ escaped, no header.
            .args(["--batch", "--skip-column-names"])
            .arg(Self::DATABASE)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if user != "root" {
            command.arg(format!("--password={user}"));
        }
        let run = async {
            let mut child = command
                .spawn()
                .map_err(|err| format!("run {command:?}: {err}; is mariadb-client installed?"))?;
            let mut stdin = child.stdin.take().expect("client stdin is piped");
            // A client that exits early (cannot connect) closes its stdin;
            // its exit status says why, so a failed write is not the error.
            let _ = stdin.write_all(sql.as_bytes()).await;
            drop(stdin);
            child
                .wait_with_output()
                .await
                .map_err(|err| format!("wait for the mariadb client: {err}"))
        };
        tokio::time::timeout(CLIENT_TIMEOUT, run)
            .await
            .unwrap_or_else(|_| Err(format!("the mariadb client took over {CLIENT_TIMEOUT:?}")))
    }
}

/// The data directory every server starts from, made by `mariadb-install-db`
/// at most once per target dir, mariadbd version and settings: under load
/// (a parallel cargo build) the install takes 3–5 s, a copy some milliseconds.
async fn template() -> &'static Path {
    static TEMPLATE: OnceCell<PathBuf> = OnceCell::const_new();
    TEMPLATE.get_or_init(find_or_make_template).await
}

async fn find_or_make_template() -> PathBuf {
    let mariadbd = system_binary("mariadbd");
    let version = Command::new(&mariadbd)
        .arg("--version")
        .output()
        .await
        .unwrap_or_else(|err| {
            panic!(
                "run {} --version: {err}; is mariadb-server installed? (scripts/test installs it)",
                mariadbd.display()
            )
        })
        .stdout;
    let init = init_sql();
    let mut hasher = DefaultHasher::new();
    (version, SHARED_ARGS, user_args(), &init).hash(&mut hasher);
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let template = root.join(format!("mariadb-template-{:016x}", hasher.finish()));
    if template.is_dir() {
        return template;
    }

    let building = super::template::building_dir(root, "mariadb");
    let init_path = building.join("init.sql");
    std::fs::write(&init_path, init)
        .unwrap_or_else(|err| panic!("write {}: {err}", init_path.display()));
    let data = building.join("data");
    let mut command = Command::new(system_binary("mariadb-install-db"));
    command
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        // Root gets an empty password over TCP, for exec_sql.
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .arg(format!("--extra-file={}", init_path.display()))
        .args(user_args())
        // Passed on to the bootstrap mariadbd. Its own tmpdir: with /tmp
        // shared, bootstraps running side by side failed now and then
        // ("Could not remove temporary table '/tmp/#sql-temptable-…'",
        // then "Unknown table 'mysql.tmp_user_sys'").
        .arg(format!("--tmpdir={}", building.display()))
        .args(SHARED_ARGS)
        .kill_on_drop(true);
    super::template::finish(command, "mariadb-server", &data, &template, &building).await
}

/// Run once, by the bootstrap. It runs with the grant tables off; FLUSH
/// PRIVILEGES turns them on so that CREATE USER works.
fn init_sql() -> String {
    format!(
        "FLUSH PRIVILEGES;\n\
         CREATE DATABASE {db};\n\
         CREATE USER '{user}'@'%' IDENTIFIED BY '{user}';\n\
         GRANT ALL ON {db}.* TO '{user}'@'%';\n",
        db = MariaDb::DATABASE,
        user = MariaDb::USER
    )
}

/// Undoes `--batch` escaping of one field: `\t`, `\n`, `\0` and `\\`.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('0') => out.push('\0'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}
