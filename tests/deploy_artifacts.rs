//! The deployment artifacts, checked by the real tools: the Dockerfile by
//! hadolint, examples/compose by promtool and amtool, deploy/kubernetes by
//! kubernetes-validate (bundled Kubernetes schemas) and, for the Prometheus
//! Operator's ServiceMonitor and PrometheusRule, by the CRD schema validators
//! of the npm package @kubernetes-models/prometheus-operator. There is no
//! Docker engine here: scripts/build-static proves the static build instead.
//! scripts/install-test-deps (scripts/deps/deploy.sh) installs the tools.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use cloudflare_argo_exporter::config_file::ConfigFile;
use serde_yaml_ng::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const EXPORTER: &str = env!("CARGO_BIN_EXE_cloudflare-argo-exporter");
const K8S: &str = "deploy/kubernetes";
const RULES: &str = "alerts/argo-smart-routing.rules.yml";
const DASHBOARD: &str = "dashboards/argo-smart-routing.json";
/// The job name the alert rules expect (ArgoExporterDown).
const JOB: &str = "cloudflare-argo";

fn path(relative: &str) -> PathBuf {
    Path::new(ROOT).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(path(relative)).unwrap_or_else(|err| panic!("{relative}: {err}"))
}

fn yaml(relative: &str) -> Value {
    serde_yaml_ng::from_str(&read(relative)).unwrap_or_else(|err| panic!("{relative}: {err}"))
}

/// Every document of a multi-document YAML file.
fn documents(relative: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(&read(relative))
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|err| panic!("{relative}: {err}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Runs a tool from the repository root; a missing tool panics with the fix.
fn run(program: &str, args: &[&str]) -> (bool, String) {
    run_with(Command::new(program).args(args), program, None)
}

fn run_with(command: &mut Command, program: &str, stdin: Option<&[u8]>) -> (bool, String) {
    command
        .current_dir(ROOT)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{program}` is not installed: run scripts/install-test-deps \
             (it runs scripts/deps/deploy.sh)"
        ),
        Err(err) => panic!("cannot run {program}: {err}"),
    };
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `a/b/../c` → `a/c`, without touching the file system (paths inside a
/// container, or files that may not exist).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {value:?}"))
}

fn seq<'a>(value: &'a Value, what: &str) -> &'a [Value] {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("{what}: expected a list, found {value:?}"))
}

/// Dockerfile instructions with continuation lines joined, comments dropped.
fn dockerfile_instructions() -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(start) => {
                current.push_str(start.trim_end());
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

/// `--flag` names the exporter's help (or a subcommand's) does not know.
fn unknown_flags(args: &[String], subcommand: Option<&str>) -> Vec<String> {
    let mut command = Command::new(EXPORTER);
    command.args(subcommand).arg("--help");
    let (ok, help) = run_with(&mut command, EXPORTER, None);
    assert!(ok, "{help}");
    args.iter()
        .filter_map(|arg| arg.strip_prefix("--"))
        .map(|flag| format!("--{}", flag.split('=').next().unwrap()))
        .filter(|flag| {
            !help.match_indices(flag.as_str()).any(|(at, _)| {
                help[at + flag.len()..]
                    .chars()
                    .next()
                    .is_none_or(|next| !(next.is_alphanumeric() || next == '-' || next == '.'))
            })
        })
        .collect()
}

fn strings(values: &[Value], what: &str) -> Vec<String> {
    values
        .iter()
        .map(|value| str_of(value, what).to_owned())
        .collect()
}

// ---------------------------------------------------------------- Dockerfile

#[test]
fn dockerfile_passes_hadolint_without_ignores() {
    let dockerfile = read("Dockerfile");
    assert!(
        !dockerfile.to_lowercase().contains("hadolint"),
        "the Dockerfile must not silence hadolint (no `# hadolint ignore=` comments)"
    );
    for config in [".hadolint.yaml", ".hadolint.yml"] {
        assert!(
            !path(config).exists(),
            "{config} could hold an ignore list: remove it"
        );
    }
    // An empty home, so no user-level hadolint config can ignore rules either.
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new("hadolint");
    command
        .args(["--no-color", "--failure-threshold", "info", "Dockerfile"])
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path());
    let (ok, text) = run_with(&mut command, "hadolint", None);
    assert!(ok && text.trim().is_empty(), "hadolint Dockerfile:\n{text}");
}

#[test]
fn dockerfile_builds_a_static_binary_into_an_empty_image() {
    let instructions = dockerfile_instructions();
    let froms: Vec<&String> = instructions
        .iter()
        .filter(|i| i.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "a multi-stage build: {froms:?}");
    let builder = froms[0].split_whitespace().nth(1).unwrap();
    let tag = builder
        .strip_prefix("rust:")
        .expect("the builder is an official rust image");
    assert!(
        tag.starts_with(|c: char| c.is_ascii_digit()),
        "pin the Rust version in the builder's tag: {builder}"
    );
    assert_eq!(froms.last().unwrap().as_str(), "FROM scratch");

    let final_stage: Vec<&String> = instructions
        .iter()
        .skip_while(|i| *i != "FROM scratch")
        .collect();
    let find = |keyword: &str| -> &str {
        final_stage
            .iter()
            .find_map(|i| i.strip_prefix(keyword))
            .unwrap_or_else(|| panic!("no {keyword}in the final stage"))
    };
    let user = find("USER ");
    let (uid, gid) = user.split_once(':').expect("USER uid:gid");
    let (uid, gid): (u32, u32) = (
        uid.parse().expect("numeric uid"),
        gid.parse().expect("numeric gid"),
    );
    assert!(uid != 0 && gid != 0, "USER {user} is root");
    assert_eq!(find("EXPOSE "), "9832");

    let copy = find("COPY --from=builder ");
    let binary = copy.split_whitespace().last().unwrap();
    let entrypoint: Vec<String> =
        serde_json::from_str(find("ENTRYPOINT ")).expect("ENTRYPOINT in exec form");
    assert_eq!(entrypoint, [binary]);
    let healthcheck = find("HEALTHCHECK ");
    let (_, cmd) = healthcheck.split_once("CMD ").expect("HEALTHCHECK CMD");
    let cmd: Vec<String> =
        serde_json::from_str(cmd).expect("HEALTHCHECK CMD in exec form: the image has no shell");
    assert_eq!(cmd, [binary, "healthcheck"]);

    // scripts/build-static builds the same way; keep the two in step.
    let script = read("scripts/build-static");
    let builds: Vec<&String> = instructions
        .iter()
        .filter(|i| i.contains("cargo build"))
        .collect();
    assert!(!builds.is_empty());
    for text in builds.iter().map(|s| s.as_str()).chain([script.as_str()]) {
        for needed in [
            "RUSTFLAGS=\"-C target-feature=+crt-static\"",
            "cargo build --release --locked --target",
        ] {
            let joined = text
                .replace("\\\n", " ")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            assert!(joined.contains(needed), "missing `{needed}` in:\n{text}");
        }
    }
}

/// The builder stage's COPY sources, all let through by .dockerignore, make a
/// manifest cargo accepts (a [[bench]] whose file is not copied breaks the
/// image build). `--bin` of no binary makes cargo stop right after loading
/// the manifest, so nothing is compiled.
#[test]
fn docker_context_holds_what_cargo_needs() {
    let ignore = read(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    assert_eq!(
        patterns.first(),
        Some(&"*"),
        ".dockerignore is an allow list"
    );
    let allowed: BTreeSet<&str> = patterns[1..]
        .iter()
        .map(|p| {
            p.strip_prefix('!')
                .expect("only `!` entries after `*`")
                .trim_end_matches('/')
        })
        .collect();

    let context = tempfile::tempdir().unwrap();
    let builder_copies = dockerfile_instructions()
        .into_iter()
        .take_while(|i| i != "FROM scratch")
        .filter(|i| i.starts_with("COPY ") && !i.contains("--from"))
        .collect::<Vec<_>>();
    assert!(!builder_copies.is_empty());
    for copy in &builder_copies {
        let words: Vec<&str> = copy.split_whitespace().skip(1).collect();
        for source in &words[..words.len() - 1] {
            let source = source.trim_end_matches('/');
            assert!(
                allowed.contains(source),
                ".dockerignore leaves out {source}, which the Dockerfile copies"
            );
            let status = Command::new("cp")
                .args([
                    "-R",
                    &path(source).to_string_lossy(),
                    &context.path().to_string_lossy(),
                ])
                .status()
                .unwrap();
            assert!(status.success());
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(&cargo);
    command
        .args(["check", "--locked", "--offline", "--bin", "no-such-bin"])
        .env("CARGO_TARGET_DIR", context.path().join("target"));
    let output = command.current_dir(context.path()).output().unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("no bin target named `no-such-bin`"),
        "cargo does not accept the Docker build context ({:?}):\n{text}",
        builder_copies
    );
}

// ---------------------------------------------------------- examples/compose

#[test]
fn compose_prometheus_config_passes_promtool() {
    let (ok, text) = run(
        "promtool",
        &["check", "config", "examples/compose/prometheus.yml"],
    );
    assert!(ok, "promtool check config:\n{text}");
    assert!(text.contains("SUCCESS: 1 rule files found"), "{text}");
    assert!(
        text.contains(&format!("Checking {RULES}")),
        "the rules of {RULES}:\n{text}"
    );

    let config = yaml("examples/compose/prometheus.yml");
    let job = seq(&config["scrape_configs"], "scrape_configs")
        .iter()
        .find(|job| job["job_name"].as_str() == Some(JOB))
        .unwrap_or_else(|| panic!("no scrape job {JOB}: the alert rules expect it"));
    let targets = strings(
        seq(&job["static_configs"][0]["targets"], "targets"),
        "target",
    );
    assert_eq!(targets, ["exporter:9832"]);
    let alertmanagers = &config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"];
    assert_eq!(
        strings(seq(alertmanagers, "alertmanagers"), "target"),
        ["alertmanager:9093"]
    );
}

#[test]
fn compose_alertmanager_config_passes_amtool() {
    let (ok, text) = run(
        "amtool",
        &["check-config", "examples/compose/alertmanager.yml"],
    );
    assert!(
        ok && text.contains("SUCCESS"),
        "amtool check-config:\n{text}"
    );
}

/// Bind mounts of a compose service: (host path, container path).
fn mounts(service: &Value, name: &str) -> Vec<(PathBuf, PathBuf)> {
    let dir = path("examples/compose");
    seq(&service["volumes"], name)
        .iter()
        .map(|volume| {
            let mut parts = str_of(volume, name).split(':');
            let (source, target) = (parts.next().unwrap(), parts.next().unwrap());
            (normalize(&dir.join(source)), PathBuf::from(target))
        })
        .collect()
}

/// Where a container path comes from on the host, through the mounts.
fn host_path(mounts: &[(PathBuf, PathBuf)], inside: &Path) -> Option<PathBuf> {
    mounts.iter().find_map(|(source, target)| {
        inside.strip_prefix(target).ok().map(|rest| {
            if rest.as_os_str().is_empty() {
                source.clone()
            } else {
                source.join(rest)
            }
        })
    })
}

#[test]
fn compose_file_wires_the_repository_files() {
    let compose = yaml("examples/compose/docker-compose.yml");
    let services = &compose["services"];

    let exporter = &services["exporter"];
    let context =
        normalize(&path("examples/compose").join(str_of(&exporter["build"]["context"], "context")));
    assert_eq!(
        context,
        normalize(Path::new(ROOT)),
        "the exporter is built from the repository"
    );
    assert!(context
        .join(str_of(&exporter["build"]["dockerfile"], "dockerfile"))
        .is_file());
    let command = strings(seq(&exporter["command"], "command"), "command");
    assert_eq!(command[0], "demo");
    assert!(
        command
            .windows(2)
            .any(|w| w == ["--alertmanager.url", "http://alertmanager:9093"]),
        "{command:?}"
    );
    assert_eq!(
        unknown_flags(&command[1..], Some("demo")),
        Vec::<String>::new()
    );

    for (name, service) in services.as_mapping().unwrap() {
        let name = str_of(name, "service");
        if let Some(image) = service["image"]
            .as_str()
            .filter(|_| service["build"].is_null())
        {
            let tag = image.rsplit_once(':').map(|(_, tag)| tag);
            assert!(
                tag.is_some_and(|t| t != "latest"),
                "pin {name}'s image: {image}"
            );
        }
    }

    // Prometheus: its config and, relative to it, the rule file.
    let prometheus = mounts(&services["prometheus"], "prometheus volumes");
    let config = Path::new("/etc/prometheus/prometheus.yml");
    assert_eq!(
        host_path(&prometheus, config),
        Some(path("examples/compose/prometheus.yml"))
    );
    let rule_files = yaml("examples/compose/prometheus.yml")["rule_files"].clone();
    for rule_file in seq(&rule_files, "rule_files") {
        let inside = normalize(
            &config
                .parent()
                .unwrap()
                .join(str_of(rule_file, "rule file")),
        );
        assert_eq!(
            host_path(&prometheus, &inside),
            Some(path(RULES)),
            "{inside:?} inside the Prometheus container is not the repository's {RULES}"
        );
    }
    let alertmanager = mounts(&services["alertmanager"], "alertmanager volumes");
    assert_eq!(
        host_path(
            &alertmanager,
            Path::new("/etc/alertmanager/alertmanager.yml")
        ),
        Some(path("examples/compose/alertmanager.yml"))
    );

    // Grafana: the real dashboard, in the directory its provider loads, and
    // Prometheus as the data source.
    let grafana = mounts(&services["grafana"], "grafana volumes");
    let (source, target) = grafana
        .iter()
        .find(|(_, target)| target.extension().is_some_and(|e| e == "json"))
        .expect("a dashboard mounted into Grafana");
    assert_eq!(source, &path(DASHBOARD));
    assert!(source.is_file(), "{DASHBOARD} does not exist");
    let provisioning = host_path(&grafana, Path::new("/etc/grafana/provisioning"))
        .expect("Grafana's provisioning directory is mounted");
    let provider: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(provisioning.join("dashboards/cloudflare-argo.yml")).unwrap(),
    )
    .unwrap();
    let provider_path = str_of(
        &provider["providers"][0]["options"]["path"],
        "provider path",
    );
    assert_eq!(Some(Path::new(provider_path)), target.parent());
    let datasources: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(provisioning.join("datasources/prometheus.yml")).unwrap(),
    )
    .unwrap();
    let datasource = &datasources["datasources"][0];
    assert_eq!(datasource["type"].as_str(), Some("prometheus"));
    assert_eq!(datasource["url"].as_str(), Some("http://prometheus:9090"));
    assert_eq!(datasource["isDefault"].as_bool(), Some(true));
}

// --------------------------------------------------------- deploy/kubernetes

/// Every YAML file under deploy/kubernetes but the kustomizations, relative
/// to the repository.
fn manifests() -> Vec<String> {
    let mut files = Vec::new();
    for dir in [K8S.to_owned(), format!("{K8S}/sharded")] {
        for entry in std::fs::read_dir(path(&dir)).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml") && name != "kustomization.yaml" {
                files.push(format!("{dir}/{name}"));
            }
        }
    }
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    files
}

fn is_crd(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("monitoring.coreos.com/"))
}

#[test]
fn kubernetes_manifests_pass_kubernetes_validate() {
    let files = manifests();
    // 1.28: the first release with the pod-index label the StatefulSet uses.
    let mut args = vec!["--strict", "-k", "1.28", "-k", "1.37"];
    args.extend(files.iter().map(String::as_str));
    let (ok, text) = run("kubernetes-validate", &args);
    assert!(ok, "kubernetes-validate {args:?}:\n{text}");
    for line in text.lines() {
        assert!(
            line.starts_with("INFO ") && line.contains(" passed ")
                || line.starts_with("WARN ")
                    && line.contains("api version monitoring.coreos.com/v1"),
            "kubernetes-validate: {line}\n(only the Prometheus Operator's kinds may lack a schema)"
        );
    }
    for file in &files {
        for doc in documents(file).iter().filter(|doc| !is_crd(doc)) {
            let kind = str_of(&doc["kind"], "kind").to_lowercase();
            let passed = format!("INFO {file} passed for resource {kind}/");
            assert_eq!(
                text.matches(&passed).count(),
                2,
                "{file}: {kind} not validated:\n{text}"
            );
        }
    }
}

/// ServiceMonitor and PrometheusRule against the CRDs' schemas. The files are
/// read with PyYAML (kubernetes-validate's dependency), a YAML 1.1 reader
/// like kubectl's, so an unquoted `on` or `off` is seen as the API server
/// would see it: a boolean.
#[test]
fn prometheus_operator_resources_pass_the_crd_schemas() {
    let files = manifests();
    let to_json = "import json, sys, yaml\n\
        print(json.dumps([{'file': f, 'doc': d} for f in sys.argv[1:] \
        for d in yaml.safe_load_all(open(f)) if d], default=str))";
    let mut args = vec!["-c", to_json];
    args.extend(files.iter().map(String::as_str));
    let (ok, json) = run("python3", &args);
    assert!(
        ok,
        "reading the manifests with PyYAML (run scripts/install-test-deps):\n{json}"
    );
    let mut docs: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    docs.retain(|entry| {
        entry["doc"]["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("monitoring.coreos.com/"))
    });
    assert_eq!(
        docs.len(),
        4,
        "a ServiceMonitor and a PrometheusRule in each variant"
    );
    // A control the validator must refuse, so a validator that checks nothing fails.
    docs.push(serde_json::json!({
        "file": "control",
        "doc": {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
                "metadata": {"name": "control"},
                "spec": {"groups": [{"name": "g", "rules": [{"alert": "NoExpr", "for": 5}]}]}}
    }));

    let (ok, root) = run("npm", &["root", "-g"]);
    assert!(ok, "npm root -g: {root}");
    let validate = r#"
        const models = require("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1");
        const entries = JSON.parse(require("fs").readFileSync(0, "utf8"));
        for (const { file, doc } of entries) {
          const Model = models[doc.kind];
          if (!Model) { console.log(`FAIL ${file} ${doc.kind}: no schema for this kind`); continue; }
          try { new Model(doc).validate(); console.log(`ok ${file} ${doc.kind}`); }
          catch (err) { console.log(`FAIL ${file} ${doc.kind}: ${err.message}`); }
        }"#;
    let mut command = Command::new("node");
    command.args(["-e", validate]).env("NODE_PATH", root.trim());
    let input = serde_json::to_vec(&docs).unwrap();
    let (ok, text) = run_with(&mut command, "node", Some(&input));
    assert!(
        ok && !text.contains("Cannot find module"),
        "{text}\n@kubernetes-models/prometheus-operator is missing: run scripts/install-test-deps"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), docs.len(), "{text}");
    for line in &lines[..lines.len() - 1] {
        assert!(line.starts_with("ok "), "CRD schema: {line}");
    }
    assert!(
        lines.last().unwrap().starts_with("FAIL control") && text.contains("expr"),
        "the validator accepted a rule without expr:\n{text}"
    );
}

#[test]
fn prometheus_rules_equal_the_rules_file() {
    let groups = yaml(RULES)["groups"].clone();
    assert!(!seq(&groups, "groups").is_empty());
    for file in [
        format!("{K8S}/prometheusrule.yaml"),
        format!("{K8S}/sharded/prometheusrule.yaml"),
    ] {
        let rule = yaml(&file);
        assert_eq!(
            rule["apiVersion"].as_str(),
            Some("monitoring.coreos.com/v1")
        );
        assert_eq!(rule["kind"].as_str(), Some("PrometheusRule"));
        assert!(
            rule["spec"]["groups"] == groups,
            "{file}: spec.groups differ from {RULES}; regenerate them (see the file's header)"
        );
        assert_eq!(
            rule["spec"].as_mapping().unwrap().len(),
            1,
            "{file}: spec has only groups"
        );
    }
}

#[test]
fn kustomizations_list_every_manifest_but_the_secret_example() {
    for dir in [K8S.to_owned(), format!("{K8S}/sharded")] {
        let kustomization = yaml(&format!("{dir}/kustomization.yaml"));
        assert_eq!(kustomization["kind"].as_str(), Some("Kustomization"));
        let listed: BTreeSet<String> =
            strings(seq(&kustomization["resources"], "resources"), "resource")
                .into_iter()
                .collect();
        let present: BTreeSet<String> = manifests()
            .iter()
            .filter_map(|file| file.strip_prefix(&format!("{dir}/")))
            .filter(|name| !name.contains('/') && *name != "secret.example.yaml")
            .map(str::to_owned)
            .collect();
        assert_eq!(listed, present, "{dir}/kustomization.yaml resources");
        for image in seq(&kustomization["images"], "images") {
            assert_eq!(image["name"].as_str(), Some("cloudflare-argo-exporter"));
        }
    }
}

fn one(file: &str, kind: &str) -> Value {
    let docs: Vec<Value> = documents(file)
        .into_iter()
        .filter(|doc| doc["kind"].as_str() == Some(kind))
        .collect();
    assert_eq!(docs.len(), 1, "one {kind} in {file}");
    docs.into_iter().next().unwrap()
}

/// What both workloads share: locked down, probed, the token from the Secret,
/// behind a Service and ServiceMonitor that give Prometheus the job the alert
/// rules expect.
fn check_workload(file: &str, kind: &str, dir: &str) -> Value {
    let text = read(file);
    assert!(text.contains("# sized from BENCHMARKS.md"), "{file}");
    let workload = one(file, kind);
    let pod = &workload["spec"]["template"]["spec"];
    let security = &pod["securityContext"];
    assert_eq!(security["runAsNonRoot"].as_bool(), Some(true), "{file}");
    assert!(
        security["runAsUser"].as_u64().is_some_and(|uid| uid != 0),
        "{file}"
    );
    assert_eq!(
        security["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault"),
        "{file}"
    );
    assert_eq!(
        pod["automountServiceAccountToken"].as_bool(),
        Some(false),
        "{file}"
    );

    let containers = seq(&pod["containers"], "containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let security = &container["securityContext"];
    assert_eq!(
        security["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "{file}"
    );
    assert_eq!(
        security["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "{file}"
    );
    assert_eq!(
        strings(seq(&security["capabilities"]["drop"], "drop"), "capability"),
        ["ALL"]
    );
    assert_eq!(container["ports"][0]["name"].as_str(), Some("metrics"));
    assert_eq!(container["ports"][0]["containerPort"].as_u64(), Some(9832));
    for (probe, endpoint) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(
            container[probe]["httpGet"]["path"].as_str(),
            Some(endpoint),
            "{file} {probe}"
        );
        assert_eq!(
            container[probe]["httpGet"]["port"].as_str(),
            Some("metrics"),
            "{file} {probe}"
        );
    }
    let resources = &container["resources"];
    for needed in [
        &resources["requests"]["cpu"],
        &resources["requests"]["memory"],
        &resources["limits"]["memory"],
    ] {
        assert!(
            !needed.is_null(),
            "{file}: requests cpu and memory, limits memory"
        );
    }
    let token = seq(&container["env"], "env")
        .iter()
        .find(|env| env["name"].as_str() == Some("CLOUDFLARE_API_TOKEN"))
        .expect("CLOUDFLARE_API_TOKEN in env");
    let secret = &token["valueFrom"]["secretKeyRef"];
    assert_eq!(secret["name"].as_str(), Some("cloudflare-argo-exporter"));
    assert_eq!(secret["key"].as_str(), Some("api-token"));
    let example = one(&format!("{K8S}/secret.example.yaml"), "Secret");
    assert_eq!(example["metadata"]["name"], secret["name"]);
    assert!(!example["stringData"]["api-token"].is_null());

    let args = strings(seq(&container["args"], "args"), "arg");
    assert_eq!(
        unknown_flags(&args, None),
        Vec::<String>::new(),
        "{file}: flags the exporter lacks"
    );

    // The Service selects the pods; the ServiceMonitor the Service's port.
    let service = one(&format!("{dir}/service.yaml"), "Service");
    let pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .unwrap();
    for (key, value) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(
            pod_labels.get(key),
            Some(value),
            "{dir}: the Service does not select the pods"
        );
    }
    assert_eq!(
        service["spec"]["ports"][0]["name"].as_str(),
        Some("metrics")
    );
    assert_eq!(service["spec"]["ports"][0]["port"].as_u64(), Some(9832));
    let monitor = one(&format!("{dir}/servicemonitor.yaml"), "ServiceMonitor");
    let service_labels = service["metadata"]["labels"].as_mapping().unwrap();
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(
            service_labels.get(key),
            Some(value),
            "{dir}: the ServiceMonitor misses the Service"
        );
    }
    let job_label = str_of(&monitor["spec"]["jobLabel"], "jobLabel");
    assert_eq!(
        service["metadata"]["labels"][job_label].as_str(),
        Some(JOB),
        "{dir}: job label"
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"].as_str(), Some("metrics"));
    assert!(
        seq(&endpoint["relabelings"], "relabelings")
            .iter()
            .any(|r| {
                r["action"].as_str() == Some("labeldrop") && r["regex"].as_str() == Some("endpoint")
            }),
        "{dir}: the operator's `endpoint` target label would clash with the exporter's"
    );
    workload
}

#[test]
fn deployment_reads_its_zones_from_the_config_map() {
    let deployment = check_workload(&format!("{K8S}/deployment.yaml"), "Deployment", K8S);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args = strings(seq(&container["args"], "args"), "arg");
    let file = args
        .iter()
        .find_map(|arg| arg.strip_prefix("--config.file="))
        .expect("--config.file=PATH");
    let (dir, name) = file.rsplit_once('/').unwrap();
    let mount = seq(&container["volumeMounts"], "volumeMounts")
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(dir))
        .expect("the config file's directory is mounted");
    let volume = seq(&pod["volumes"], "volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let config_map = one(&format!("{K8S}/configmap.yaml"), "ConfigMap");
    assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"]);
    let zones = str_of(&config_map["data"][name], "the zones file");
    let parsed = ConfigFile::parse(zones).unwrap_or_else(|err| panic!("{name}: {err}"));
    assert!(parsed.zones.len() >= 2, "{zones}");
}

#[test]
fn statefulset_shards_by_pod_index() {
    let dir = format!("{K8S}/sharded");
    let set = check_workload(&format!("{dir}/statefulset.yaml"), "StatefulSet", &dir);
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    let args = strings(seq(&container["args"], "args"), "arg");
    let value = |flag: &str| {
        args.iter()
            .find_map(|arg| arg.strip_prefix(&format!("{flag}=")))
            .unwrap_or_else(|| panic!("{flag}=VALUE in {args:?}"))
    };
    let count: u64 = value("--shard.count").parse().unwrap();
    assert_eq!(
        set["spec"]["replicas"].as_u64(),
        Some(count),
        "replicas and --shard.count differ"
    );
    assert_eq!(value("--shard.index"), "$(POD_INDEX)");
    assert!(args.iter().any(|arg| arg == "--zones.discover"));
    let index = seq(&container["env"], "env")
        .iter()
        .find(|env| env["name"].as_str() == Some("POD_INDEX"))
        .expect("POD_INDEX in env");
    assert_eq!(
        index["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("metadata.labels['apps.kubernetes.io/pod-index']")
    );
    // Each shard's share of the API budget leaves the user's total within 1000/5m.
    let (requests, window) = value("--cloudflare.rate-limit").split_once('/').unwrap();
    assert_eq!(window, "5m");
    assert!(requests.parse::<u64>().unwrap() * count <= 1000);

    let service = one(&format!("{dir}/service.yaml"), "Service");
    assert_eq!(set["spec"]["serviceName"], service["metadata"]["name"]);
    assert_eq!(
        service["spec"]["clusterIP"].as_str(),
        Some("None"),
        "a headless governing Service"
    );
}
