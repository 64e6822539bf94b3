//! Named profiles (a server URL and a token) in `$XDG_CONFIG_HOME/tarmac/profiles.yaml`
//! (`~/.config/tarmac/` by default), a 0600 file in a 0700 directory. `TARMAC_URL` and
//! `TARMAC_TOKEN` override the profile's values.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::api::{Api, CliError, CliResult};

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Profiles {
    /// The profile used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) current: Option<String>,
    #[serde(default)]
    pub(crate) profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Profile {
    pub(crate) url: String,
    pub(crate) token: String,
}

pub(crate) fn path() -> CliResult<PathBuf> {
    dirs::config_dir()
        .map(|d| d.join("tarmac").join("profiles.yaml"))
        .ok_or_else(|| {
            CliError::new("no config directory: set HOME or XDG_CONFIG_HOME")
                .hint("or skip profiles: set TARMAC_URL and TARMAC_TOKEN")
        })
}

impl Profiles {
    pub(crate) fn load() -> CliResult<Self> {
        let path = path()?;
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_yaml_ng::from_str(&text).map_err(|e| {
                CliError::new(format!("{}: {e}", path.display()))
                    .hint("fix the file, or remove it and run `tarmac login` again")
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(CliError::new(format!("{}: {e}", path.display()))),
        }
    }

    /// Writes the file whole (a temporary file renamed over it), readable by its owner only.
    pub(crate) fn save(&self) -> CliResult<PathBuf> {
        let path = path()?;
        let dir = path.parent().expect("the path has a directory");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let tmp = dir.join(".profiles.yaml.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let text = serde_yaml_ng::to_string(self)
            .map_err(|e| CliError::new(format!("cannot write the profiles: {e}")))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        // In case an older file was made with a wider mode.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(path)
    }

    fn name(&self, wanted: Option<&str>) -> String {
        wanted
            .map(str::to_string)
            .or_else(|| self.current.clone())
            .unwrap_or_else(|| "default".into())
    }
}

/// Where the client commands connect: `--url`/`TARMAC_URL` and `TARMAC_TOKEN` over the
/// profile's values.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) token: String,
}

pub(crate) fn resolve(profile: Option<&str>, url: Option<&str>) -> CliResult<Target> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let profiles = Profiles::load()?;
    let name = profiles.name(profile);
    let saved = profiles.profiles.get(&name);
    if profile.is_some() && saved.is_none() {
        return Err(
            CliError::new(format!("there is no profile '{name}'")).hint(format!(
                "create it with `tarmac login --profile {name} --url URL`"
            )),
        );
    }
    let url = url
        .map(str::to_string)
        .or_else(|| env("TARMAC_URL"))
        .or_else(|| saved.map(|p| p.url.clone()));
    let token = env("TARMAC_TOKEN").or_else(|| saved.map(|p| p.token.clone()));
    match (url, token) {
        (Some(url), Some(token)) => Ok(Target { url, token }),
        _ => Err(CliError::new("not signed in").hint(
            "run `tarmac login --url http://127.0.0.1:8080` with the token `tarmac serve` printed, or set TARMAC_URL and TARMAC_TOKEN",
        )),
    }
}

impl Target {
    pub(crate) fn api(&self) -> CliResult<Api> {
        Api::new(&self.url, &self.token)
    }
}

/// Reads a token: from stdin when it is not a terminal (`echo $TOKEN | tarmac login`), else
/// from a prompt that does not echo.
fn read_token() -> CliResult<String> {
    use std::io::IsTerminal;
    let token = if std::io::stdin().is_terminal() {
        rpassword::prompt_password("API token: ")?
    } else {
        let mut s = String::new();
        std::io::stdin().read_line(&mut s)?;
        s
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(CliError::new("no token given")
            .hint("paste the token `tarmac serve` printed on first start, or one from `tarmac tokens create`"));
    }
    Ok(token)
}

/// `tarmac login`: checks the token against the server, then saves the profile and makes it
/// the current one.
pub(crate) async fn login(profile: Option<&str>, url: Option<&str>) -> CliResult<()> {
    let mut profiles = Profiles::load()?;
    let name = profile.unwrap_or("default").to_string();
    let url = url
        .map(str::to_string)
        .or_else(|| profiles.profiles.get(&name).map(|p| p.url.clone()))
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let token = read_token()?;
    let api = Api::new(&url, &token)?;
    let me = api.get("/api/user").await?;
    let org = me["organizations"]
        .get(0)
        .and_then(|o| o["githubLogin"].as_str())
        .unwrap_or("?");
    let role = me["organizations"]
        .get(0)
        .and_then(|o| o["role"].as_str())
        .unwrap_or("?");
    profiles.profiles.insert(
        name.clone(),
        Profile {
            url: url.trim_end_matches('/').to_string(),
            token,
        },
    );
    profiles.current = Some(name.clone());
    let path = profiles.save()?;
    println!(
        "Signed in to {url} as {} (org {org}, role {role}).",
        me["name"].as_str().unwrap_or("?")
    );
    println!("Profile '{name}' saved in {}.", path.display());
    Ok(())
}

/// `tarmac logout`: forgets the profile's token.
pub(crate) fn logout(profile: Option<&str>) -> CliResult<()> {
    let mut profiles = Profiles::load()?;
    let name = profiles.name(profile);
    if profiles.profiles.remove(&name).is_none() {
        println!("Profile '{name}' was not signed in.");
        return Ok(());
    }
    if profiles.current.as_deref() == Some(name.as_str()) {
        profiles.current = None;
    }
    let path = profiles.save()?;
    println!("Signed out of profile '{name}' ({}).", path.display());
    Ok(())
}
