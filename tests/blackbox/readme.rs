//! The README's "Using the CLI" session, run as it is written there: its `sh` block line by
//! line and its `stacks.yaml`, against a real server, with the real `tarmac` on `PATH`.

use std::process::Command;

use serde_json::Value;

use crate::support::{TestApp, TestRepo};

/// The fenced block of `lang` that follows `heading` in the README.
fn block(readme: &str, heading: &str, lang: &str) -> String {
    let section = readme
        .split_once(heading)
        .unwrap_or_else(|| panic!("the README has no {heading:?}"))
        .1;
    let start = section
        .find(&format!("```{lang}\n"))
        .unwrap_or_else(|| panic!("no {lang} block under {heading:?}"))
        + lang.len()
        + 4;
    let len = section[start..].find("```").unwrap();
    section[start..start + len].to_string()
}

#[tokio::test]
async fn the_readme_cli_session_runs_as_written() {
    require!(Tools);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let session = block(&readme, "### Using the CLI", "sh");
    let stacks_yaml = block(&readme, "**`tarmac apply -f stacks.yaml`**", "yaml");

    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    repo.commit(
        &[(
            "main.tf",
            "resource \"terraform_data\" \"x\" { input = \"readme\" }\n",
        )],
        "root program",
    );
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(cwd.path().join("stacks.yaml"), stacks_yaml).unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_tarmac"))
        .parent()
        .unwrap()
        .display()
        .to_string();

    let mut transcript = String::new();
    for line in session.lines().filter(|l| !l.trim().is_empty()) {
        let out = Command::new("sh")
            .args(["-c", line])
            .current_dir(cwd.path())
            .env(
                "PATH",
                format!("{bin}:{}", std::env::var("PATH").unwrap_or_default()),
            )
            .env("XDG_CONFIG_HOME", cwd.path().join("config"))
            .env("URL", &app.url)
            .env("TOKEN", &app.token)
            .env("REPO", repo.url())
            .env("CHECKOUT_DB_PASSWORD", "hunter2-from-the-env")
            .env_remove("TARMAC_URL")
            .env_remove("TARMAC_TOKEN")
            .env_remove("TARMAC_PROFILE")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        transcript.push_str(&format!("$ {line}\n{stdout}{stderr}"));
        assert!(out.status.success(), "{transcript}");
    }

    // What the session did, checked through the API.
    assert!(
        transcript.contains("Apply complete! Resources: 1 added"),
        "{transcript}"
    );
    assert!(
        transcript.contains("Deployment") && transcript.contains("succeeded."),
        "{transcript}"
    );
    let (_, v) = app.get("/api/stacks/default/web/dev/deployments").await;
    let ops: Vec<&str> = v["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["pulumiOperation"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["preview", "update"], "{v}");
    let (_, stack) = app.get("/api/stacks/default/web/dev").await;
    assert_eq!(stack["tags"]["team"], "payments", "{stack}");
    let (_, sched) = app
        .get("/api/stacks/default/web/dev/deployments/schedules")
        .await;
    assert_eq!(sched["schedules"].as_array().unwrap().len(), 1, "{sched}");
    // The second apply found nothing to do.
    assert!(
        transcript.contains("2 stack(s): 2 unchanged"),
        "{transcript}"
    );
    let (_, settings) = app
        .get("/api/stacks/default/checkout/prod/deployments/settings")
        .await;
    assert_eq!(settings["version"], 1, "written once: {settings}");
    assert_eq!(
        settings["sourceContext"]["git"]["repoDir"], "services/checkout",
        "{settings}"
    );
    let var = &settings["operationContext"]["environmentVariables"]["DB_PASSWORD"];
    assert!(var["secret"].is_string(), "{settings}");
    assert!(!settings.to_string().contains("hunter2"), "{settings}");
    // The last command's JSON is the server's list.
    let json_start = transcript
        .rfind("$ tarmac stacks ls --output json\n")
        .unwrap();
    let listed: Value =
        serde_json::from_str(transcript[json_start..].split_once('\n').unwrap().1).unwrap();
    let names: Vec<String> = listed["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}/{}",
                s["projectName"].as_str().unwrap(),
                s["stackName"].as_str().unwrap()
            )
        })
        .collect();
    for want in ["web/dev", "checkout/prod", "search/prod"] {
        assert!(names.iter().any(|n| n == want), "{want}: {names:?}");
    }
}
