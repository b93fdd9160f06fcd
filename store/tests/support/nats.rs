//! Real `nats-server` processes on loopback for cluster-mode tests: one
//! server, or a three-node JetStream cluster, each killable for real.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server binary: `SLUICE_NATS_SERVER`, else the one
/// `scripts/nats-server` installs (2.12.8; Debian's 2.9 cannot serve the
/// key-value API async-nats 0.51 speaks).
pub fn nats_server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("SLUICE_NATS_SERVER") {
        return PathBuf::from(path);
    }
    // The workspace's target directory, from whichever crate's tests run.
    let found = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("target/nats/venv/bin/nats-server"))
        .find(|path| path.exists());
    found.unwrap_or_else(|| {
        panic!(
            "nats-server 2.12 not found: run scripts/nats-server (scripts/test does) or set SLUICE_NATS_SERVER"
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One server of a [`Nats`] set.
#[derive(Debug)]
pub struct Server {
    /// Its `server_name` (`n0`, `n1`, ...).
    pub name: String,
    /// Its client port.
    pub port: u16,
    /// Its monitoring (HTTP) port.
    pub monitor: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// Running nats-server processes, killed when dropped.
#[derive(Debug)]
pub struct Nats {
    /// The servers, by index.
    pub servers: Vec<Server>,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// One JetStream server.
    pub fn single() -> Nats {
        Nats::start(1, None)
    }

    /// One JetStream server on `port`, not started yet.
    pub fn single_on(port: u16) -> Nats {
        Nats::start(1, Some(port))
    }

    /// A three-node JetStream cluster on loopback.
    pub fn cluster() -> Nats {
        Nats::start(3, None)
    }

    fn start(n: usize, port: Option<u16>) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (port.unwrap_or_else(free_port), free_port(), free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route, _)| format!("nats://127.0.0.1:{route}"))
            .collect();
        let mut servers = Vec::new();
        for (i, (client, route, monitor)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let store = dir.path().join(&name);
            let mut config = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
                store.display()
            );
            if n > 1 {
                config.push_str(&format!(
                    "cluster {{\n  name: sluice-test\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                ));
            }
            let path = dir.path().join(format!("{name}.conf"));
            std::fs::write(&path, config).unwrap();
            servers.push(Server {
                name: name.clone(),
                port: *client,
                monitor: *monitor,
                config: path,
                log: dir.path().join(format!("{name}.log")),
                child: None,
            });
        }
        let mut nats = Nats { servers, _dir: dir };
        if port.is_none() {
            for i in 0..n {
                nats.spawn(i);
            }
            for i in 0..n {
                nats.wait_listening(i);
            }
        }
        nats
    }

    /// Every client URL.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(Server::url).collect()
    }

    /// Starts server `i` (again, on its old store directory).
    pub fn spawn(&mut self, i: usize) {
        let server = &mut self.servers[i];
        assert!(server.child.is_none(), "{} is running", server.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&server.log)
            .unwrap();
        let child = Command::new(nats_server_binary())
            .arg("-c")
            .arg(&server.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting nats-server");
        server.child = Some(child);
    }

    /// Waits until server `i` accepts connections.
    pub fn wait_listening(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let server = &self.servers[i];
        while std::net::TcpStream::connect(("127.0.0.1", server.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} did not listen; log:\n{}",
                server.name,
                std::fs::read_to_string(&server.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills server `i` with SIGKILL: no goodbye to its peers or clients.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// The name of the server leading stream `stream`, as a running
    /// server's monitoring endpoint (`/jsz`) reports it.
    pub fn stream_leader(&self, stream: &str) -> Option<String> {
        use std::io::{Read, Write};
        for server in self.servers.iter().filter(|s| s.child.is_some()) {
            let Ok(mut socket) = std::net::TcpStream::connect(("127.0.0.1", server.monitor)) else {
                continue;
            };
            let _ = socket.write_all(b"GET /jsz?streams=true HTTP/1.0\r\nHost: localhost\r\n\r\n");
            let mut answer = String::new();
            let _ = socket.read_to_string(&mut answer);
            let Some((_, body)) = answer.split_once("\r\n\r\n") else {
                continue;
            };
            let Ok(jsz) = serde_json::from_str::<serde_json::Value>(body) else {
                continue;
            };
            for account in jsz["account_details"].as_array().into_iter().flatten() {
                for detail in account["stream_detail"].as_array().into_iter().flatten() {
                    if detail["name"] == stream
                        && let Some(leader) = detail["cluster"]["leader"].as_str()
                    {
                        return Some(leader.to_owned());
                    }
                }
            }
        }
        None
    }

    /// The index of the server named `name`.
    pub fn index_of(&self, name: &str) -> usize {
        self.servers
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("no server {name}"))
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}
