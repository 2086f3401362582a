//! A real nginx in front of test nodes, configured from the repository's own
//! `nginx/switchboard.conf`, so the example operators copy is the one tested.

use std::net::SocketAddr;
use std::path::Path;

use tokio::process::Command;

use super::process::LoggedChild;
use super::{TempDir, free_port, manifest_dir, system_binary};

pub struct Nginx {
    port: u16,
    config: String,
    // Declared before `dir` so the process is gone before its directory.
    process: LoggedChild,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx on a free 127.0.0.1 port with `nginx/switchboard.conf`'s
    /// upstream pointed at `upstreams`; returns once it accepts connections.
    /// The configuration is checked with `nginx -t` first.
    pub async fn start(upstreams: &[SocketAddr]) -> Nginx {
        assert!(!upstreams.is_empty(), "nginx needs at least one upstream");
        let site_path = manifest_dir().join("nginx/switchboard.conf");
        let site = std::fs::read_to_string(&site_path)
            .unwrap_or_else(|err| panic!("read {}: {err}", site_path.display()));
        let port = free_port();
        let dir = TempDir::new("nginx");
        let config = render_config(&site, upstreams, port, dir.path());
        let config_path = dir.path().join("nginx.conf");
        std::fs::write(&config_path, &config)
            .unwrap_or_else(|err| panic!("write {}: {err}", config_path.display()));

        check_config(dir.path(), &config);

        let process = LoggedChild::spawn(
            "nginx",
            nginx_command(dir.path()),
            &dir.path().join("nginx.log"),
        );
        let mut nginx = Nginx {
            port,
            config,
            process,
            dir,
        };
        nginx.wait_accepting().await;
        nginx
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The generated nginx.conf.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// One line per finished request:
    /// `<client address> "<request line>" <status> upstream=<node address>`.
    /// nginx writes a line when the request is finalised, which can be a moment
    /// after the client has read the response.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// nginx's error log (it goes to stderr, captured here).
    pub fn error_log(&self) -> String {
        self.process.logs()
    }

    async fn wait_accepting(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        self.process
            .wait_ready(&format!("accept on {addr}"), async || {
                tokio::net::TcpStream::connect(addr)
                    .await
                    .map(drop)
                    .map_err(|err| err.to_string())
            })
            .await;
    }
}

/// `nginx -p <dir> -c <dir>/nginx.conf -e stderr -g "daemon off;"`, the
/// foreground form both the check and the real start use.
fn nginx_command(dir: &Path) -> Command {
    let mut command = Command::new(system_binary("nginx"));
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        // The startup log goes to stderr too, not to the system's
        // /var/log/nginx, which a non-root user cannot open.
        .args(["-e", "stderr", "-g", "daemon off;"]);
    command
}

fn check_config(dir: &Path, config: &str) {
    let mut command = nginx_command(dir).into_std();
    command.arg("-t");
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("run `nginx -t` ({command:?}); is nginx installed? {err}"));
    assert!(
        output.status.success(),
        "nginx -t rejected the generated configuration:\n{}\n----- nginx.conf -----\n{config}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Wraps the site file (http-level blocks) into a complete nginx.conf whose
/// every path is inside `dir`, with the upstream's `server` lines replaced by
/// `upstreams` (keeping their parameters) and `listen` moved to `port`.
fn render_config(site: &str, upstreams: &[SocketAddr], port: u16, dir: &Path) -> String {
    let mut body = String::new();
    let mut in_upstream = false;
    let mut servers_replaced = false;
    let mut listens_replaced = 0;
    for line in site.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with('#') {
            body.push_str(line);
        } else if trimmed.starts_with("upstream ") && trimmed.ends_with('{') {
            in_upstream = true;
            body.push_str(line);
        } else if in_upstream && trimmed.starts_with('}') {
            in_upstream = false;
            body.push_str(line);
        } else if in_upstream && trimmed.starts_with("server ") {
            // Only the first server line is used as the template: its address
            // is swapped for each upstream, its parameters kept.
            if !servers_replaced {
                let params = trimmed
                    .trim_end()
                    .trim_end_matches(';')
                    .split_whitespace()
                    .skip(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                for (i, upstream) in upstreams.iter().enumerate() {
                    if i > 0 {
                        body.push('\n');
                    }
                    body.push_str(&format!("{indent}server {upstream} {params};"));
                }
                servers_replaced = true;
            } else {
                continue;
            }
        } else if trimmed.starts_with("listen ") {
            body.push_str(&format!("{indent}listen 127.0.0.1:{port};"));
            listens_replaced += 1;
        } else {
            body.push_str(line);
        }
        body.push('\n');
    }
    assert!(
        servers_replaced,
        "nginx/switchboard.conf has no `server` line inside an `upstream` block"
    );
    assert_eq!(
        listens_replaced, 1,
        "nginx/switchboard.conf should have exactly one `listen` line"
    );

    let dir = dir.display();
    let site = body
        .lines()
        .map(|line| {
            if line.is_empty() {
                String::new()
            } else {
                format!("    {line}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        r#"# Generated by tests/it/support/nginx.rs from nginx/switchboard.conf.
# One process, no workers: a SIGKILL on drop then leaves nothing behind
# still holding the port.
master_process off;
pid {dir}/nginx.pid;
error_log stderr notice;

events {{
    worker_connections 1024;
}}

http {{
    log_format upstream '$remote_addr "$request" $status upstream=$upstream_addr';
    access_log {dir}/access.log upstream;
    client_body_temp_path {dir}/client_body_temp;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;

{site}
}}
"#
    )
}
