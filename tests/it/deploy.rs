//! The deployment files are checked by the tools their formats come with: hadolint on the
//! Dockerfile, the Compose specification's schema and the Compose CLI on docker-compose.yml,
//! `nginx -t` on the production nginx configuration (with a throwaway certificate),
//! kubernetes-validate (and prometheus-operator's CRD schema) on k8s/, promtool on the
//! Prometheus configuration and alert rules (including their unit tests), and the metric
//! names the dashboard, the alerts and the autoscaler use against deploy/metrics.txt.
//!
//! The tools come from scripts/test: Debian's nginx, prometheus (promtool) and openssl, and
//! tests/deploy/requirements.txt in `.tools/venv`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{TempDir, manifest_dir, system_binary};

/// A tool scripts/test installs into `.tools/venv/bin`.
fn venv_tool(name: &str) -> PathBuf {
    let path = manifest_dir().join(".tools/venv/bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/test, which installs tests/deploy/requirements.txt into .tools/venv",
        path.display()
    );
    path
}

/// A Debian binary scripts/test installs (from PATH or /usr/sbin).
fn debian_tool(name: &str, package: &str) -> PathBuf {
    let path = system_binary(name);
    assert!(
        path.is_file(),
        "`{name}` is missing: run scripts/test, which installs the Debian package {package}"
    );
    path
}

/// Runs `command` from the repository root and returns its output, whatever its status.
fn run(command: &mut Command) -> Output {
    command
        .current_dir(manifest_dir())
        .output()
        .unwrap_or_else(|err| panic!("run {command:?}: {err}"))
}

/// Runs `command` and fails the test with its output unless it succeeds; returns stdout.
fn run_ok(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n----- stdout -----\n{}\n----- stderr -----\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn read(path: &str) -> String {
    let full = manifest_dir().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|err| panic!("read {}: {err}", full.display()))
}

/// `10s`, `2m`, `500ms` in seconds (the forms these files use).
fn seconds(duration: &str) -> f64 {
    let duration = duration.trim().trim_matches('"');
    let (number, unit) = duration
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((duration, "s"), |i| duration.split_at(i));
    let number: f64 = number
        .parse()
        .unwrap_or_else(|err| panic!("duration {duration:?}: {err}"));
    match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => panic!("duration {duration:?}: unknown unit {unit:?}"),
    }
}

/// The value of the first `key: value` line in `text` (YAML-ish, one line).
fn yaml_value<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .map(|value| value.trim().trim_matches('"'))
        .unwrap_or_else(|| panic!("no `{key}:` line"))
}

#[test]
fn dockerfile_passes_hadolint_and_runs_as_a_non_root_user_with_a_healthcheck() {
    run_ok(Command::new(venv_tool("hadolint")).args(["--no-color", "Dockerfile"]));

    let dockerfile = read("Dockerfile");
    let runtime = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, last)| last)
        .expect("a multi-stage Dockerfile");
    let instruction = |name: &str| {
        runtime
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("the runtime stage has no {name}"))
    };
    let user = instruction("USER ");
    assert!(
        !user.contains("root") && !user.contains(" 0"),
        "runtime user: {user}"
    );
    assert!(instruction("HEALTHCHECK ").contains("--interval"));
    assert!(runtime.contains("/health"), "the healthcheck hits /health");
    assert_eq!(instruction("EXPOSE "), "EXPOSE 6001");
    assert!(
        dockerfile.contains("--locked"),
        "release builds use Cargo.lock"
    );
}

#[test]
fn compose_file_matches_the_compose_spec_and_loads_in_the_compose_cli() {
    run_ok(
        Command::new(venv_tool("check-jsonschema"))
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg("docker-compose.yml"),
    );

    // Secrets have no defaults: without them Compose refuses to start, naming them.
    let compose = || {
        let mut command = Command::new(venv_tool("docker-compose"));
        command
            .args(["--file", "docker-compose.yml", "--project-directory", "."])
            .env_remove("SWITCHBOARD_JWT_SECRET")
            .env_remove("SWITCHBOARD_API_KEYS");
        command
    };
    let unset = run(compose().args(["config", "--quiet"]));
    assert!(!unset.status.success(), "compose ran without secrets");
    assert!(
        String::from_utf8_lossy(&unset.stderr).contains("set SWITCHBOARD_JWT_SECRET"),
        "{}",
        String::from_utf8_lossy(&unset.stderr)
    );

    let config = run_ok(
        compose()
            .env("SWITCHBOARD_JWT_SECRET", "test-secret")
            .env("SWITCHBOARD_API_KEYS", "test-key")
            .args(["config", "--format", "json"]),
    );
    let config: serde_json::Value = serde_json::from_str(&config).expect("compose config JSON");
    let services = config["services"].as_object().expect("services");
    for name in [
        "redis",
        "mysql",
        "switchboard-1",
        "switchboard-2",
        "switchboard-3",
        "nginx",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "no service {name}");
    }
    // Every file or directory a service mounts from the repository exists.
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            if volume["type"] == "bind" {
                let source = volume["source"].as_str().expect("bind source");
                assert!(
                    Path::new(source).exists(),
                    "{name} mounts {source}, which does not exist"
                );
            }
        }
    }
    // A node gets more time to stop than it takes to drain.
    for n in 1..=3 {
        let node = &services[&format!("switchboard-{n}")];
        let drain = seconds(
            node["environment"]["SWITCHBOARD_DRAIN_TIME"]
                .as_str()
                .expect("SWITCHBOARD_DRAIN_TIME"),
        );
        let grace = seconds(
            node["stop_grace_period"]
                .as_str()
                .expect("stop_grace_period"),
        );
        assert!(
            grace > drain + 1.0,
            "switchboard-{n}: stop_grace_period {grace}s vs drain {drain}s"
        );
    }

    // Where the docker CLI has its compose plugin, it must agree.
    let has_plugin = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if has_plugin {
        run_ok(
            Command::new("docker")
                .args([
                    "compose",
                    "--file",
                    "docker-compose.yml",
                    "config",
                    "--quiet",
                ])
                .env("SWITCHBOARD_JWT_SECRET", "test-secret")
                .env("SWITCHBOARD_API_KEYS", "test-key"),
        );
    }
}

/// A line-level substitution that must apply: a config that drifted from what the test
/// rewrites fails here, not later with a confusing nginx error.
fn substitute(text: &str, from: &str, to: &str, what: &str) -> String {
    assert!(text.contains(from), "{what}: `{from}` not found");
    text.replace(from, to)
}

/// The value of the nginx directive `name value;` (first occurrence).
fn directive<'a>(config: &'a str, name: &str) -> &'a str {
    config
        .lines()
        .find_map(|line| line.trim().strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().strip_suffix(';'))
        .unwrap_or_else(|| panic!("no `{name}` directive"))
}

/// The body of the first `{ ... }` block whose header line starts with `header`.
fn block<'a>(config: &'a str, header: &str) -> &'a str {
    let start = config
        .find(header)
        .unwrap_or_else(|| panic!("no `{header}` block"));
    let body = &config[start..];
    let mut depth = 0;
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &body[..=i];
                }
            }
            _ => {}
        }
    }
    panic!("`{header}` block not closed")
}

#[test]
fn production_nginx_config_passes_nginx_t_with_a_throwaway_certificate() {
    let nginx = debian_tool("nginx", "nginx");
    let openssl = debian_tool("openssl", "openssl");
    let dir = TempDir::new("deploy-nginx");
    let tmp = dir.path().display().to_string();

    std::fs::create_dir(dir.path().join("tls")).expect("create tls dir");
    run_ok(Command::new(openssl).args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &format!("{tmp}/tls/privkey.pem"),
        "-out",
        &format!("{tmp}/tls/fullchain.pem"),
    ]));

    // The site as shipped, with the certificate and snippet paths moved and the Compose
    // service names (which nginx resolves at load) replaced by a loopback address.
    let mut site = read("nginx/production.conf");
    site = substitute(
        &site,
        "/etc/nginx/tls/",
        &format!("{tmp}/tls/"),
        "certificates",
    );
    let snippet = manifest_dir().join("nginx/switchboard-proxy.conf");
    site = substitute(
        &site,
        "/etc/nginx/switchboard-proxy.conf",
        &snippet.display().to_string(),
        "proxy snippet",
    );
    for n in 1..=3 {
        site = substitute(
            &site,
            &format!("server switchboard-{n}:6001"),
            &format!("server 127.0.0.{n}:6001"),
            "upstream",
        );
    }
    let site_path = dir.path().join("production.conf");
    std::fs::write(&site_path, &site).expect("write site");

    // nginx/nginx.conf with every system path moved into the temp dir.
    let mut main = read("nginx/nginx.conf");
    main = substitute(&main, "user nginx;", "", "user");
    main = substitute(
        &main,
        "pid /var/run/nginx.pid;",
        &format!("pid {tmp}/nginx.pid;"),
        "pid",
    );
    main = substitute(
        &main,
        "error_log /var/log/nginx/error.log warn;",
        "error_log stderr warn;",
        "error_log",
    );
    main = substitute(
        &main,
        "access_log /var/log/nginx/access.log;",
        &format!("access_log {tmp}/access.log;"),
        "access_log",
    );
    main = substitute(
        &main,
        "include /etc/nginx/conf.d/*.conf;",
        &format!(
            "include {};\n    client_body_temp_path {tmp}/client_body;\n    proxy_temp_path {tmp}/proxy;\n    fastcgi_temp_path {tmp}/fastcgi;\n    uwsgi_temp_path {tmp}/uwsgi;\n    scgi_temp_path {tmp}/scgi;",
            site_path.display()
        ),
        "site include",
    );
    let main_path = dir.path().join("nginx.conf");
    std::fs::write(&main_path, &main).expect("write nginx.conf");

    let check = run(Command::new(nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&main_path)
        .args(["-e", "stderr", "-t"]));
    assert!(
        check.status.success(),
        "nginx -t rejected nginx/nginx.conf + nginx/production.conf:\n{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // What nginx cannot judge: the internal endpoints are closed to the internet, and the
    // long-lived locations outwait the ping interval + timeout (25 s + 20 s).
    let production = read("nginx/production.conf");
    for internal in ["location /metrics", "location /admin"] {
        let body = block(&production, internal);
        assert!(body.contains("deny all;"), "{internal} is not denied");
        assert!(!body.contains("allow all"), "{internal} allows all");
    }
    let proxy = read("nginx/switchboard-proxy.conf");
    for timeout in ["proxy_read_timeout", "proxy_send_timeout"] {
        assert!(seconds(directive(&proxy, timeout)) > 45.0, "{timeout}");
    }
    assert!(proxy.contains("proxy_buffering off;"));
    assert!(proxy.contains("proxy_set_header Upgrade $http_upgrade;"));
}

#[test]
fn kubernetes_manifests_validate() {
    let dir = manifest_dir().join("k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("read {}: {err}", dir.display()))
        .map(|entry| entry.expect("k8s/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();

    let mut core = Vec::new();
    let mut custom = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read manifest");
        if file.ends_with("prometheus-adapter-values.yaml") {
            // Helm values, not an object; its metric names are checked below.
            continue;
        } else if text.contains("\nkind: ServiceMonitor") {
            custom.push(file);
        } else {
            core.push(file);
        }
    }
    let kinds: BTreeSet<String> = core
        .iter()
        .map(|file| yaml_value(&std::fs::read_to_string(file).expect("read"), "kind").to_owned())
        .collect();
    for kind in [
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "Ingress",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(kind), "no {kind} in k8s/");
    }

    // --strict: an unknown field is an error, not ignored.
    let output = run_ok(
        Command::new(venv_tool("kubernetes-validate"))
            .args(["--strict"])
            .args(&core),
    );
    // kubernetes-validate only warns about kinds it has no schema for (CRDs): none may slip
    // through that way.
    assert!(
        !output.contains("Couldn't find schema"),
        "kubernetes-validate skipped a kind:\n{output}"
    );

    // The ServiceMonitor against prometheus-operator's CRD schema (see the script).
    assert!(!custom.is_empty(), "no ServiceMonitor in k8s/");
    run_ok(
        Command::new(venv_tool("python"))
            .arg(manifest_dir().join("tests/deploy/check_servicemonitor.py"))
            .args(&custom),
    );
}

/// The port of a `host:port` setting.
fn port_of(address: &str) -> &str {
    address
        .rsplit_once(':')
        .map(|(_, port)| port)
        .unwrap_or_else(|| panic!("`{address}` has no port"))
}

#[test]
fn metrics_and_admin_are_on_an_admin_port_that_no_proxy_exposes() {
    // Compose: every node has the admin listener, Prometheus scrapes that port, nginx never
    // names it and refuses /metrics and /admin itself.
    let compose = read("docker-compose.yml");
    let admin = port_of(yaml_value(&compose, "SWITCHBOARD_ADMIN_LISTEN")).to_owned();
    let prometheus = read("deploy/prometheus/prometheus.yml");
    let job = prometheus
        .split("- job_name:")
        .find(|job| job.trim_start().starts_with("switchboard"))
        .expect("a switchboard scrape job");
    let targets: Vec<&str> = job
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- switchboard-"))
        .collect();
    assert_eq!(targets.len(), 3, "{job}");
    for target in targets {
        assert!(
            target.ends_with(&format!(":{admin}")),
            "scrape target {target}"
        );
    }
    let production = read("nginx/production.conf");
    assert!(
        !production.contains(&format!(":{admin}")),
        "nginx/production.conf names the admin port {admin}"
    );
    for internal in ["location /metrics", "location /admin"] {
        assert!(
            !block(&production, internal).contains("proxy_pass"),
            "{internal} is proxied"
        );
    }

    // Kubernetes: the same port in the ConfigMap, the pod and the Service; scraped by the
    // ServiceMonitor, never routed by the Ingress.
    let configmap = read("k8s/configmap.yaml");
    let admin = port_of(yaml_value(&configmap, "SWITCHBOARD_ADMIN_LISTEN")).to_owned();
    let deployment = read("k8s/deployment.yaml");
    let (_, pod_port) = deployment
        .split_once("- name: admin")
        .expect("a container port named admin");
    assert_eq!(yaml_value(pod_port, "containerPort"), admin);
    let service = read("k8s/service.yaml");
    let (_, service_port) = service
        .split_once("- name: admin")
        .expect("a Service port named admin");
    assert_eq!(yaml_value(service_port, "targetPort"), "admin");
    let monitor = read("k8s/servicemonitor.yaml");
    assert_eq!(yaml_value(&monitor, "- port"), "admin");
    let ingress = read("k8s/ingress.yaml");
    assert!(
        ingress
            .lines()
            .filter_map(|line| line.trim().strip_prefix("name:"))
            .all(|name| name.trim() != "admin"),
        "the Ingress routes the admin port"
    );
}

#[test]
fn kubernetes_grace_period_covers_prestop_pause_and_drain() {
    let deployment = read("k8s/deployment.yaml");
    let configmap = read("k8s/configmap.yaml");
    let grace = seconds(yaml_value(&deployment, "terminationGracePeriodSeconds"));
    let drain = seconds(yaml_value(&configmap, "SWITCHBOARD_DRAIN_TIME"));
    let pause = yaml_value(&deployment, "command");
    let pause = seconds(
        pause
            .strip_prefix("[\"sleep\", \"")
            .and_then(|rest| rest.strip_suffix("\"]"))
            .unwrap_or_else(|| panic!("preStop is not a sleep: {pause}")),
    );
    assert!(
        grace > pause + drain + 5.0,
        "terminationGracePeriodSeconds {grace}s must exceed preStop {pause}s + drain {drain}s with a margin"
    );
    assert!(deployment.contains("path: /ready") && deployment.contains("path: /health"));
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool_check() {
    let promtool = debian_tool("promtool", "prometheus");
    // `check config` also checks the rule files it names.
    run_ok(Command::new(&promtool).args(["check", "config", "deploy/prometheus/prometheus.yml"]));
    run_ok(Command::new(&promtool).args(["check", "rules", "deploy/prometheus/alerts.yml"]));
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let promtool = debian_tool("promtool", "prometheus");
    let output = run_ok(Command::new(&promtool).args([
        "test",
        "rules",
        "deploy/prometheus/alerts_test.yml",
    ]));
    assert!(output.contains("SUCCESS"), "{output}");

    // Every alert has at least one unit test.
    let rules = read("deploy/prometheus/alerts.yml");
    let tests = read("deploy/prometheus/alerts_test.yml");
    for line in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {line}")),
            "alert {line} has no test in alerts_test.yml"
        );
    }
}

/// deploy/metrics.txt: base name → type.
fn known_metrics() -> BTreeMap<String, String> {
    read("deploy/metrics.txt")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next().expect("name");
            let kind = fields
                .next()
                .unwrap_or_else(|| panic!("deploy/metrics.txt: `{name}` has no type"));
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "deploy/metrics.txt: `{name}` has type {kind}"
            );
            (name.to_owned(), kind.to_owned())
        })
        .collect()
}

/// Every `switchboard_*` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("switchboard_") {
        let preceded_by_word = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_word {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn dashboard_alerts_and_autoscaler_use_only_known_metrics() {
    let known = known_metrics();
    let mut accepted = BTreeSet::new();
    for (name, kind) in &known {
        accepted.insert(format!("switchboard_{name}"));
        if kind == "histogram" {
            for suffix in ["bucket", "sum", "count"] {
                accepted.insert(format!("switchboard_{name}_{suffix}"));
            }
        }
    }

    // The dashboard parses, and every panel queries through the datasource variable.
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/switchboard.json"))
            .expect("deploy/grafana/dashboards/switchboard.json is JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().expect("panel title");
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {title:?} datasource"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            exprs.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    let dashboard_names = metric_names(&exprs.join("\n"));

    let mut unknown = Vec::new();
    let sources = [
        ("dashboard", exprs.join("\n")),
        (
            "deploy/prometheus/alerts.yml",
            read("deploy/prometheus/alerts.yml"),
        ),
        (
            "deploy/prometheus/alerts_test.yml",
            read("deploy/prometheus/alerts_test.yml"),
        ),
        ("k8s/hpa.yaml", read("k8s/hpa.yaml")),
        (
            "k8s/prometheus-adapter-values.yaml",
            read("k8s/prometheus-adapter-values.yaml"),
        ),
    ];
    for (source, text) in &sources {
        let names = metric_names(text);
        assert!(!names.is_empty(), "{source} uses no switchboard metric");
        unknown.extend(
            names
                .difference(&accepted)
                .map(|name| format!("{source}: {name}")),
        );
    }
    assert!(
        unknown.is_empty(),
        "metrics not in deploy/metrics.txt:\n{}",
        unknown.join("\n")
    );

    // The dashboard shows what the issue asks for.
    for needed in [
        "switchboard_connections",
        "switchboard_messages_out_total",
        "switchboard_delivery_latency_seconds_bucket",
        "switchboard_broadcast_fanout_bucket",
        "switchboard_errors_total",
        "switchboard_redis_up",
        "switchboard_database_pool_connections",
        "switchboard_database_errors_total",
    ] {
        assert!(
            dashboard_names.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
    assert!(
        exprs.iter().any(|e| e.contains("by (instance)")),
        "no per-node breakdown"
    );
}
