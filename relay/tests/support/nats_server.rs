//! A throwaway `nats-server` with JetStream (its own port and store directory), for the relay's
//! NATS tests and benchmark; killed and its store removed when dropped.
// Each user needs part of it.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    child: Child,
    store: PathBuf,
    pub port: u16,
}

/// `nats-server` on PATH, else where the Debian package puts it (/usr/sbin is not on every
/// user's PATH).
pub fn nats_server_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .expect("nats-server is not installed (scripts/setup.sh installs it)")
}

impl NatsServer {
    /// Start `nats-server -js` on a free port of 127.0.0.1 and wait until it accepts
    /// connections.
    pub fn start() -> NatsServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let store =
            std::env::temp_dir().join(format!("ae-relay-nats-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&store);
        std::fs::create_dir_all(&store).expect("the NATS store directory");
        let log = std::fs::File::create(store.join("server.log")).expect("the NATS server log");
        let child = Command::new(nats_server_binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        let server = NatsServer { child, store, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {port}: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's address for async-nats.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// An endpoint URL publishing to `subject` on this server.
    pub fn url(&self, subject: &str) -> String {
        format!("nats://127.0.0.1:{}/{subject}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.store.join("server.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
