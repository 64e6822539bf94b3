//! The first ten minutes, as the README's first screen runs them: `tarmac serve --demo` in a
//! fresh directory (the default, relative data dir), `tarmac quickstart --token`, twice; and a
//! server whose deployments find no engine.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestApp, TestRepo};

/// `tarmac serve` started as a user would, in `cwd`, with its banner.
struct Served {
    child: Child,
    url: String,
    token: String,
    banner: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tools_path() -> String {
    let tools = std::env::var("TARMAC_TEST_TOOLS").expect("require!(Tools) checked it");
    format!(
        "{}/bin:{}",
        tools,
        std::env::var("PATH").unwrap_or_default()
    )
}

fn serve(cwd: &Path, args: &[&str], path: &str) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tarmac"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .current_dir(cwd)
        .env("PATH", path)
        .env_remove("TARMAC_DATA_DIR")
        .env_remove("TARMAC_CHILD_PATH")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.starts_with("Press Ctrl+C") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let url = banner
        .lines()
        .find_map(|l| l.strip_prefix("Tarmac listening on "))
        .expect("the banner names the URL")
        .to_string();
    let token = banner
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("tmc_"))
        .expect("a first start prints a token")
        .to_string();
    Served {
        child,
        url,
        token,
        banner,
    }
}

fn quickstart(cwd: &Path, url: &str, token: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tarmac"))
        .args(["quickstart", "--url", url, "--token", token])
        .current_dir(cwd)
        .env("XDG_CONFIG_HOME", cwd.join("config"))
        .env_remove("TARMAC_DATA_DIR")
        .env_remove("TARMAC_TOKEN")
        .env_remove("TARMAC_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

async fn get(url: &str, token: &str) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .get(url)
        .header("Authorization", format!("token {token}"))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_quickstart_deploys_its_example_twice_and_touches_nothing_else() {
    require!(Tools);
    let home = tempfile::tempdir().unwrap();
    let cwd = home.path();
    let s = serve(cwd, &["--demo"], &tools_path());
    assert!(
        s.banner.contains("Deployments run with PATH="),
        "{}",
        s.banner
    );
    assert!(s.banner.contains("  terraform Terraform v"), "{}", s.banner);
    assert!(!s.banner.contains("Warning: no IaC engine"), "{}", s.banner);
    let api = |p: &str| format!("{}/api/stacks/default/{p}", s.url);

    // Another stack, which the quickstart must leave alone.
    let client = reqwest::Client::new();
    let r = client
        .post(api("other/dev/deployments/settings"))
        .header("Authorization", format!("token {}", s.token))
        .json(&json!({"sourceContext": {"git": {"repoUrl": "https://example.com/r.git"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let first = quickstart(cwd, &s.url, &s.token);
    let (out, err) = text(&first);
    assert!(first.status.success(), "{out}\n{err}");
    let link = format!("{}/default/quickstart/dev/deployments/1", s.url);
    assert!(
        out.contains(&format!("Open it in the console: {link}")),
        "{out}"
    );
    for next in [
        "tarmac run default/quickstart/dev --op preview --follow",
        "tarmac schedules create default/quickstart/dev --drift",
        "tarmac run default/quickstart/dev --op destroy --follow",
    ] {
        assert!(out.contains(next), "{next}: {out}");
    }
    assert!(out.contains("Apply complete! Resources: 1 added"), "{out}");
    assert!(err.contains("succeeded"), "{err}");
    // The link opens the console.
    let page = client.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    // The output is recorded, and the state kept in the (relative) data dir.
    let (status, export) = get(&api("quickstart/dev/export"), &s.token).await;
    assert_eq!(status, 200, "{export}");
    assert!(export.to_string().contains("Hello from Tarmac"), "{export}");
    assert!(
        cwd.join(".tarmac/state/default/quickstart/dev/terraform.tfstate")
            .is_file()
    );
    let (_, stack) = get(&api("quickstart/dev"), &s.token).await;
    assert_eq!(stack["tags"]["tarmac:demo"], "quickstart", "{stack}");

    // Again: the same repository and stack, a second update that changes nothing.
    let second = quickstart(cwd, &s.url, &s.token);
    let (out, err) = text(&second);
    assert!(second.status.success(), "{out}\n{err}");
    assert!(
        out.contains(&format!("{}/default/quickstart/dev/deployments/2", s.url)),
        "{out}"
    );
    assert!(out.contains("No changes."), "{out}");
    let commits = Command::new("git")
        .args(["rev-list", "--count", "HEAD"])
        .current_dir(cwd.join(".tarmac/demo/quickstart"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&commits.stdout).trim(), "1");

    // Nothing else changed.
    let (_, settings) = get(&api("other/dev/deployments/settings"), &s.token).await;
    assert_eq!(settings["version"], 1, "{settings}");
    let (_, runs) = get(&api("other/dev/deployments"), &s.token).await;
    assert_eq!(runs["deployments"], json!([]), "{runs}");

    // `--demo` opens the demo directory only: another local repository is refused.
    let outside = TestRepo::new();
    let (status, v) = {
        let r = client
            .post(api("escape/dev/deployments"))
            .header("Authorization", format!("token {}", s.token))
            .json(&json!({"operation": "update", "sourceContext": {"git": {"repoUrl": outside.url()}}}))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("only inside"),
        "{v}"
    );
}

#[tokio::test]
async fn the_quickstart_leaves_a_stack_of_its_name_that_it_did_not_make() {
    require!(Tools);
    let app = TestApp::spawn_strict(&["--demo"]).await;
    let (status, v) = app
        .post(
            "/api/stacks/default/quickstart",
            json!({"stackName": "dev", "tags": {"owner": "someone"}}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let cwd = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tarmac"))
        .args([
            "quickstart",
            "--url",
            &app.url,
            "--token",
            &app.token,
            "--data-dir",
        ])
        .arg(app.data())
        .current_dir(cwd.path())
        .env("XDG_CONFIG_HOME", cwd.path())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("did not make"), "{stderr}");
    let (_, settings) = app
        .get("/api/stacks/default/quickstart/dev/deployments/settings")
        .await;
    assert_eq!(settings["code"], 404, "untouched: {settings}");
}

#[tokio::test]
async fn without_an_engine_the_server_warns_and_the_failure_names_the_engine() {
    require!(Tools);
    let home = tempfile::tempdir().unwrap();
    // Deployments find git and nothing else.
    let bin = home.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let git = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    std::os::unix::fs::symlink(git.trim(), bin.join("git")).unwrap();
    let child_path = bin.display().to_string();
    let s = serve(
        home.path(),
        &["--allow-local-repos", "--demo", "--child-path", &child_path],
        &std::env::var("PATH").unwrap(),
    );
    assert!(
        s.banner
            .contains("Warning: no IaC engine (terraform, tofu or pulumi)"),
        "{}",
        s.banner
    );
    assert!(s.banner.contains("--child-path"), "{}", s.banner);
    assert!(s.banner.contains("  terraform not found"), "{}", s.banner);

    let (_, caps) = get(&format!("{}/api/capabilities", s.url), &s.token).await;
    let engines = caps["tarmac"]["engines"].as_array().unwrap();
    assert!(
        engines
            .iter()
            .any(|e| e["name"] == "git" && e["found"] == true),
        "{caps}"
    );
    assert!(
        engines
            .iter()
            .all(|e| e["name"] == "git" || e["found"] == false),
        "{caps}"
    );

    // The quickstart stops before it makes anything.
    let qs = quickstart(home.path(), &s.url, &s.token);
    let (out, err) = text(&qs);
    assert_eq!(qs.status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains("no IaC engine"), "{err}");

    // A Terraform deployment fails saying which engine, where it looked, and how to fix it.
    let repo = TestRepo::new();
    repo.commit(
        &[("main.tf", "resource \"terraform_data\" \"x\" {}\n")],
        "tf",
    );
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{}/api/stacks/default/web/dev/deployments", s.url))
        .header("Authorization", format!("token {}", s.token))
        .json(&json!({"operation": "update", "sourceContext": {"git": {"repoUrl": repo.url(), "branch": "refs/heads/main"}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().expect("created").to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let log = loop {
        let (_, d) = get(
            &format!("{}/api/stacks/default/web/dev/deployments/{id}", s.url),
            &s.token,
        )
        .await;
        if d["status"] == "failed" {
            let (_, logs) = get(
                &format!("{}/api/stacks/default/web/dev/deployments/{id}/logs", s.url),
                &s.token,
            )
            .await;
            break logs.to_string();
        }
        assert_ne!(d["status"], "succeeded", "{d}");
        assert!(std::time::Instant::now() < deadline, "{d}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        log.contains(&format!(
            "terraform was not found on the deployments' PATH ({child_path})"
        )),
        "{log}"
    );
    assert!(log.contains("--child-path"), "{log}");
}
