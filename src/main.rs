//! The `switchboard` binary: parse the configuration, start logging and tracing, serve until
//! a signal.

use std::process::ExitCode;

use switchboard::config::{Args, Command, TokenArgs, describe_arg_error};
use switchboard::telemetry::{Setup, Telemetry};
use tokio::net::TcpListener;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;

/// jemalloc rather than glibc's malloc: after a burst of large buffers (e.g. request bodies)
/// glibc kept most of the memory, jemalloc returns it (docs/SECURITY.md, "Pre-authentication
/// memory").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its start: a background thread purges freed pages after 1 s,
/// even while the node is idle (by default purging waits for later allocations).
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    let args = match Args::load_from(std::env::args_os()) {
        Ok(args) => args,
        Err(e) => match describe_arg_error(&e) {
            Some(line) => {
                eprintln!("switchboard: invalid configuration: {line}");
                return ExitCode::from(2);
            }
            None => e.exit(),
        },
    };
    match &args.command {
        Some(Command::Migrate) => {
            if let Err(e) = Setup::logs(args.telemetry.log_format).install() {
                eprintln!("switchboard: {e}");
                return ExitCode::FAILURE;
            }
            return migrate(&args);
        }
        Some(Command::Token(token)) => return print_token(&args, token),
        None => {}
    }
    let (config, clients) = match args.build() {
        Ok(built) => built,
        Err(e) => {
            eprintln!("switchboard: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(runtime) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    let telemetry = {
        // The span exporter is a task on this runtime.
        let _runtime = runtime.enter();
        // The admin page's recent warnings and errors, with their own (cheap) level filter.
        let recent = switchboard::admin::recent::layer()
            .with_filter(LevelFilter::WARN)
            .boxed();
        match Setup::logs(config.log_format)
            .traces(&config.server.node_id)
            .layer(recent)
            .install()
        {
            Ok(telemetry) => telemetry,
            Err(e) => {
                eprintln!("switchboard: invalid configuration: {e}");
                return ExitCode::from(2);
            }
        }
    };
    raise_file_limit(config.limits.max_connections);
    if telemetry.traces() {
        tracing::info!("exporting traces over OTLP");
    }
    let code = serve(&runtime, config, clients);
    // Outside the runtime's tasks, which must still run to send the last spans.
    Telemetry::shutdown(telemetry);
    code
}

/// Serves until a shutdown signal and the drain that follows.
fn serve(
    runtime: &tokio::runtime::Runtime,
    config: switchboard::config::Config,
    clients: switchboard::config::Clients,
) -> ExitCode {
    runtime.block_on(async {
        let listener = match listen(config.server.listen) {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!(
                    "switchboard: SWITCHBOARD_LISTEN: cannot listen on {}: {e}",
                    config.server.listen
                );
                return ExitCode::FAILURE;
            }
        };
        match switchboard::server::run(config, clients, listener, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchboard: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Builds a runtime, saying why on stderr when it cannot.
fn runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    builder
        .enable_all()
        .build()
        .map_err(|e| eprintln!("switchboard: cannot start the runtime: {e}"))
        .ok()
}

/// `switchboard migrate`: applies the pending migrations and says which.
fn migrate(args: &Args) -> ExitCode {
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(switchboard::notifications::migrate::command(args)) {
        Ok(applied) if applied.is_empty() => {
            println!("switchboard migrate: nothing to apply");
            ExitCode::SUCCESS
        }
        Ok(applied) => {
            println!("switchboard migrate: applied {}", applied.join(", "));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchboard migrate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `switchboard token`: prints a token on stdout, alone on its line so that `$(…)` takes it.
fn print_token(args: &Args, token: &TokenArgs) -> ExitCode {
    let key = match args.token_key() {
        Ok(key) => key,
        Err(e) => {
            eprintln!("switchboard token: {e}");
            return ExitCode::from(2);
        }
    };
    match switchboard::token::mint(&key, token) {
        Ok(jwt) => {
            println!("{jwt}");
            if key.development {
                eprintln!(
                    "switchboard token: signed with the public development secret; only a --dev node accepts it"
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchboard token: cannot sign: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Binds the client port with a deep accept queue: in a reconnect storm the default (1,024)
/// overflows, and every dropped SYN costs its client a one-second retransmit. The kernel caps
/// the queue at `net.core.somaxconn`.
fn listen(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Pending connections the kernel may queue before the node accepts them.
const LISTEN_BACKLOG: u32 = 8192;

/// Raises the soft open-files limit to the hard one: every client is a file descriptor, and
/// service managers often start processes with a soft limit of 1,024.
fn raise_file_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < max_connections as u64 => tracing::warn!(
            open_files = limit,
            max_connections,
            "the open-files limit is below SWITCHBOARD_MAX_CONNECTIONS; raise LimitNOFILE / ulimit -n"
        ),
        Ok(limit) => tracing::debug!(open_files = limit, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = interrupt => {}
            () = terminate => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
