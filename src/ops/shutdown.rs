//! Shutdown signalling: one sender, any number of receivers; `recv` returns once shutdown has
//! been requested (also if it was requested before `recv` was called).

use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The sending side.
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<bool>,
}

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx }, Shutdown { rx })
}

impl Trigger {
    pub fn fire(&self) {
        self.tx.send_replace(true);
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    /// Waits for shutdown.
    pub async fn recv(&mut self) {
        // An error means the trigger is gone: treat it as shutdown too.
        let _ = self.rx.wait_for(|v| *v).await;
    }

    pub fn is_fired(&self) -> bool {
        *self.rx.borrow()
    }
}
