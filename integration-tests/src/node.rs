//! Command processors and other test programs as child processes, so tests can
//! kill them for real (SIGKILL: no hand-over, no LeaveGroup) or freeze them
//! (SIGSTOP), and read what they print.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::mpsc;

/// A child process whose stdout lines can be awaited; killed when dropped.
#[derive(Debug)]
pub struct Node {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    name: String,
}

impl Node {
    /// Starts the `counter_node` processor (its path: `env!("CARGO_BIN_EXE_counter_node")`
    /// in a test) for `prefix` with `partitions` partitions and extra environment.
    pub fn counter(
        program: &str,
        bootstrap: &str,
        prefix: &str,
        partitions: u32,
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(program);
        command
            .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
            .env("TRIBUTARY_PREFIX", prefix)
            .env("TRIBUTARY_PARTITIONS", partitions.to_string());
        for (key, value) in env {
            command.env(key, value);
        }
        Self::spawn("counter_node", command)
    }

    /// Starts `command` with stdout piped.
    pub fn spawn(name: &str, mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            name: name.to_owned(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the process prints `want` on a line of its own.
    pub async fn expect_line(&mut self, want: &str, within: Duration) {
        expect_line(&mut self.lines, &self.name, want, within).await;
    }

    /// Sends a signal (`-STOP`, `-CONT`, `-KILL`, …) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {} failed", self.name);
    }

    /// SIGKILL, and reap the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Node {
    /// Waits until the process prints a line starting with `prefix`, and returns
    /// that line (e.g. an address the process chose). Earlier lines are skipped.
    pub async fn line_starting_with(&mut self, prefix: &str, within: Duration) -> String {
        let wait = async {
            while let Some(line) = self.lines.recv().await {
                if line.starts_with(prefix) {
                    return Some(line);
                }
            }
            None
        };
        match tokio::time::timeout(within, wait).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "{} exited ({:?}) without printing a line starting with `{prefix}`",
                self.name,
                self.child.wait().ok()
            ),
            Err(_) => panic!(
                "{} did not print a line starting with `{prefix}` within {within:?}",
                self.name
            ),
        }
    }

    /// The lines printed since the last call (or since the lines last awaited),
    /// without waiting.
    pub fn printed(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.try_recv() {
            lines.push(line);
        }
        lines
    }

    /// How the process ended, or `None` while it runs (does not wait).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// Waits until `lines` (what program `name` prints) has `want` on a line of its own;
/// panics when the program ends first or `within` passes.
pub async fn expect_line(
    lines: &mut mpsc::UnboundedReceiver<String>,
    name: &str,
    want: &str,
    within: Duration,
) {
    let wait = async {
        while let Some(line) = lines.recv().await {
            if line == want {
                return true;
            }
        }
        false
    };
    match tokio::time::timeout(within, wait).await {
        Ok(true) => {}
        Ok(false) => panic!("{name} exited without printing `{want}`"),
        Err(_) => panic!("{name} did not print `{want}` within {within:?}"),
    }
}
