//! Replies handed over in memory to a gateway of the processor's own process.
//!
//! Each [`CommandGateway`](super::CommandGateway) registers its waiting senders here
//! under a random id and puts that id on its commands (`tributary_gateway`). Once a
//! transaction has committed, the processor looks each reply's gateway id up: a
//! gateway of this process that still waits gets the reply from memory, which spares
//! the reply's produce to the replies topic and the gateway's fetch of it. Every other
//! reply (a gateway in another process, a command without the header, a sender that
//! stopped waiting) goes through the replies topic as before. The hand-over happens at
//! the same point as the produce: after the commit, never before.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::oneshot;

use super::wire::ReplyWire;

/// A reply as it reaches a waiting `send`.
#[derive(Debug)]
pub(crate) enum Delivered {
    /// Read from the replies topic (and decoded there, to find its sender).
    Read(ReplyWire),
    /// Handed over in memory: the reply record's value, decoded by its sender so that
    /// the processor does not decode under its lock.
    InProcess(Arc<Vec<u8>>),
}

/// A waiting sender: its reply, or why its reply could not be read.
pub(crate) type Waiter = oneshot::Sender<Result<Delivered, String>>;

/// A gateway's waiting senders, by command id.
pub(crate) type Pending = Mutex<HashMap<String, Waiter>>;

/// The gateways of this process, by id.
static GATEWAYS: LazyLock<Mutex<HashMap<String, Weak<Pending>>>> = LazyLock::new(Mutex::default);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A gateway's entry in this process's registry; dropping it removes the entry.
#[derive(Debug)]
pub(crate) struct Registration {
    id: String,
}

impl Registration {
    /// Registers `pending` under a new random id.
    pub(crate) fn new(pending: &Arc<Pending>) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        lock(&GATEWAYS).insert(id.clone(), Arc::downgrade(pending));
        Self { id }
    }

    /// The id the gateway puts on its commands.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&GATEWAYS).remove(&self.id);
    }
}

/// Takes the waiting sender of `command_id` if `gateway` is a gateway of this
/// process and that sender still waits. `None`: the reply must go through Kafka.
pub(crate) fn waiter(gateway: &str, command_id: &str) -> Option<Waiter> {
    let pending = lock(&GATEWAYS).get(gateway).and_then(Weak::upgrade)?;
    let waiter = lock(&pending).remove(command_id)?;
    // A sender that stopped waiting (timed out, cancelled) is as good as gone.
    (!waiter.is_closed()).then_some(waiter)
}

/// Hands `reply` to a sender taken with [`waiter`]. Should it stop waiting
/// meanwhile, nobody is left to tell: its `send` has already returned.
pub(crate) fn hand_over(waiter: Waiter, reply: &Arc<Vec<u8>>) {
    let _ = waiter.send(Ok(Delivered::InProcess(Arc::clone(reply))));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn waiting(
        pending: &Pending,
        command_id: &str,
    ) -> oneshot::Receiver<Result<Delivered, String>> {
        let (tx, rx) = oneshot::channel();
        lock(pending).insert(command_id.to_owned(), tx);
        rx
    }

    #[test]
    fn a_waiting_sender_of_a_registered_gateway_gets_the_reply() {
        let pending: Arc<Pending> = Arc::default();
        let registration = Registration::new(&pending);
        let mut rx = waiting(&pending, "c-1");
        let reply = Arc::new(b"{}".to_vec());
        hand_over(waiter(registration.id(), "c-1").unwrap(), &reply);
        match rx.try_recv().unwrap() {
            Ok(Delivered::InProcess(bytes)) => assert_eq!(*bytes, b"{}"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(lock(&pending).is_empty());
        // Delivered once: a second reply for the same id goes through Kafka.
        assert!(waiter(registration.id(), "c-1").is_none());
    }

    #[test]
    fn anything_else_goes_through_kafka() {
        let pending: Arc<Pending> = Arc::default();
        let registration = Registration::new(&pending);
        // Nobody waits for this command id.
        let other = waiting(&pending, "c-2");
        assert!(waiter(registration.id(), "c-1").is_none());
        // An id no gateway of this process has (another process's gateway).
        assert!(waiter("0123456789abcdef", "c-2").is_none());
        // A sender that stopped waiting.
        drop(other);
        assert!(waiter(registration.id(), "c-2").is_none());
        // A gateway that is gone.
        let id = registration.id().to_owned();
        let _late = waiting(&pending, "c-3");
        drop(registration);
        assert!(waiter(&id, "c-3").is_none());
        let kept = Registration::new(&pending);
        drop(pending);
        assert!(waiter(kept.id(), "c-3").is_none());
    }
}
