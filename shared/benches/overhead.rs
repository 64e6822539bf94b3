//! P2: platform overhead. The same Terraform `apply` of 50 `terraform_data` resources, run by
//! hand (`terraform init` + `apply` with the shim) and through Tarmac (API, queue, worker, git
//! clone, the same two commands, outputs), in interleaved pairs, each on fresh state. Prints
//! the ratio of the medians. Needs the Terraform shim (`tests/setup.sh`, `TARMAC_TEST_TOOLS`).
//!
//! cargo bench --bench overhead -- [--pairs 10]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pairs: usize = args
        .iter()
        .position(|a| a == "--pairs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let tools =
        std::env::var("TARMAC_TEST_TOOLS").expect("set TARMAC_TEST_TOOLS (run tests/setup.sh)");
    let bin = Path::new(&tools).join("bin");
    let work = tempfile::tempdir().unwrap();
    let mut program = String::new();
    for i in 0..50 {
        program.push_str(&format!(
            "resource \"terraform_data\" \"r{i}\" {{\n  input = \"value-{i}\"\n}}\n"
        ));
    }
    let repo = common::repo_with(work.path(), &program);

    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let server = common::Server::start(
        &work.path().join("data"),
        &["--allow-local-repos", "--workers", "1"],
        Some(&path),
    );
    let url = server.url.clone();
    let client = reqwest::Client::new();
    let auth = server.auth.clone();

    let (mut by_hand, mut through) = (vec![], vec![]);
    for i in 0..pairs {
        // By hand: a copy of the program, fresh state, the same commands Tarmac runs.
        let dir = work.path().join(format!("hand-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("main.tf"), &program).unwrap();
        let t = Instant::now();
        for cmd in [
            vec!["init", "-input=false", "-no-color"],
            vec!["apply", "-auto-approve", "-input=false", "-no-color"],
        ] {
            let ok = Command::new(bin.join("terraform"))
                .args(&cmd)
                .current_dir(&dir)
                .env_clear()
                .env("PATH", &path)
                .env("HOME", &dir)
                .env("CHECKPOINT_DISABLE", "1")
                .env("TF_IN_AUTOMATION", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            assert!(ok);
        }
        by_hand.push(t.elapsed().as_secs_f64());

        // Through Tarmac: a fresh stack, from the POST to the terminal status.
        let stack = format!("{url}/api/stacks/default/overhead/s{i}");
        let body = serde_json::json!({"operation": "update", "inheritSettings": false,
            "sourceContext": {"git": {"repoUrl": format!("file://{}", repo.display()), "branch": "main", "repoDir": "infra"}}});
        let t = Instant::now();
        let created: serde_json::Value = client
            .post(format!("{stack}/deployments"))
            .header("Authorization", &auth)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["id"].as_str().unwrap().to_string();
        common::wait_succeeded(
            &client,
            &format!("{stack}/deployments/{id}"),
            &auth,
            Duration::from_millis(5),
        )
        .await;
        through.push(t.elapsed().as_secs_f64());
    }
    drop(server);
    let (h, t) = (median(&mut by_hand), median(&mut through));
    println!(
        "P2: Terraform apply of 50 terraform_data resources, {pairs} interleaved pairs, fresh state each"
    );
    println!("| by hand (median) | through Tarmac (median) | ratio |");
    println!("|---|---|---|");
    println!("| {:.3} s | {:.3} s | {:.3} |", h, t, t / h);
}
