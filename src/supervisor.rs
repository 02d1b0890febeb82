//! Long-lived tasks of the daemon, watched: a task that ends or panics before shutdown is a fatal
//! error (the daemon logs which task and why, and exits non-zero so systemd or the kubelet
//! restarts it) instead of leaving a node that looks alive but no longer does its job.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;

use tokio::task::{Id, JoinSet};

/// Why a supervised task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskExit {
    pub name: &'static str,
    /// `None`: the task returned normally.
    pub error: Option<String>,
}

impl Display for TaskExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            None => write!(f, "the {} task ended", self.name),
            Some(e) => write!(f, "the {} task failed: {e}", self.name),
        }
    }
}

/// A set of named tasks.
#[derive(Default)]
pub struct Supervisor {
    tasks: JoinSet<Result<(), String>>,
    names: HashMap<Id, &'static str>,
}

impl Supervisor {
    pub fn new() -> Supervisor {
        Supervisor::default()
    }

    /// Run `task` on the runtime, watched under `name`.
    pub fn spawn<F, E>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Display,
    {
        let handle = self
            .tasks
            .spawn(async move { task.await.map_err(|e| e.to_string()) });
        self.names.insert(handle.id(), name);
    }

    /// Wait for the next task to end (pending forever when there is none).
    pub async fn next_exit(&mut self) -> TaskExit {
        let Some(joined) = self.tasks.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, error) = match joined {
            Ok((id, result)) => (id, result.err()),
            Err(e) if e.is_panic() => (e.id(), Some("it panicked".to_string())),
            Err(e) => (e.id(), Some(format!("it was cancelled: {e}"))),
        };
        TaskExit {
            name: self.names.remove(&id).unwrap_or("unnamed"),
            error,
        }
    }

    /// Wait for every task to end.
    pub async fn join_all(&mut self) {
        while self.tasks.join_next().await.is_some() {}
        self.names.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_the_task_that_ended_failed_or_panicked() {
        let mut s = Supervisor::new();
        s.spawn("forever", async {
            std::future::pending::<()>().await;
            Ok::<(), String>(())
        });
        s.spawn("failing", async { Err::<(), _>("socket closed") });
        assert_eq!(
            s.next_exit().await,
            TaskExit {
                name: "failing",
                error: Some("socket closed".into())
            }
        );
        s.spawn("panicking", async {
            if true {
                panic!("boom");
            }
            Ok::<(), String>(())
        });
        let exit = s.next_exit().await;
        assert_eq!(exit.name, "panicking");
        assert_eq!(exit.to_string(), "the panicking task failed: it panicked");
        s.spawn("quiet", async { Ok::<(), String>(()) });
        assert_eq!(s.next_exit().await.to_string(), "the quiet task ended");
    }
}
