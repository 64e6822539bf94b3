//! What a test needs from outside the repository, and what happens when it is missing. On a
//! plain `cargo test` the test is skipped, with a one-line reason on stderr; under
//! `tests/run.sh`, which sets `TARMAC_REQUIRE_ALL_TESTS=1`, it fails, so CI never passes by
//! skipping.

use std::io::Write;
use std::sync::Once;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// What `tests/setup.sh` installs (`TARMAC_TEST_TOOLS`): the Terraform engine behind its
    /// shim, the test venvs.
    Tools,
    /// The local AWS emulator that `tests/run.sh` starts (`AWS_ENDPOINT_URL`).
    Emulator,
    /// What the console's browser tests (`tests/console/`) need: `node`, Chromium
    /// (`/usr/bin/chromium` or `$CHROMIUM`) and `npm ci` done in `tests/console`.
    #[allow(dead_code)] // not every test crate drives a browser
    Browser,
}

impl Need {
    fn missing(self) -> Option<&'static str> {
        match self {
            Need::Tools => std::env::var_os("TARMAC_TEST_TOOLS").is_none().then_some(
                "TARMAC_TEST_TOOLS is not set (the Terraform engine and test tools); run tests/run.sh",
            ),
            Need::Emulator => std::env::var_os("AWS_ENDPOINT_URL").is_none().then_some(
                "AWS_ENDPOINT_URL is not set (the AWS emulator); run tests/run.sh",
            ),
            Need::Browser => browser_missing(),
        }
    }
}

/// Why the console's browser tests cannot run here, if they cannot.
fn browser_missing() -> Option<&'static str> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let chromium = std::env::var_os("CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into());
    let on_path = |tool: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|dir| dir.join(tool).is_file()))
    };
    if !on_path("node") {
        Some("node is not on PATH (the console's browser tests); run tests/setup.sh")
    } else if !std::path::Path::new(&chromium).is_file() {
        Some("no Chromium at /usr/bin/chromium or $CHROMIUM; run tests/setup.sh")
    } else if !root
        .join("tests/console/node_modules/playwright-core/package.json")
        .is_file()
    {
        Some("tests/console/node_modules has no playwright-core; run tests/setup.sh")
    } else {
        None
    }
}

static SAID: Once = Once::new();

/// Why the test cannot run here, if it cannot. Panics instead when every test must run.
pub(crate) fn missing(needs: &[Need]) -> Option<&'static str> {
    let why = needs.iter().find_map(|n| n.missing())?;
    if std::env::var_os("TARMAC_REQUIRE_ALL_TESTS").is_some() {
        panic!("TARMAC_REQUIRE_ALL_TESTS is set, but {why}");
    }
    // Straight to stderr, past the test harness's capture, once per test binary.
    SAID.call_once(|| {
        let _ = writeln!(std::io::stderr(), "skipping tests: {why}");
    });
    Some(why)
}

/// Returns from the test (skipping it) unless what it needs is here.
macro_rules! require {
    ($($need:ident),+) => {
        if crate::require::missing(&[$(crate::require::Need::$need),+]).is_some() {
            return;
        }
    };
}
